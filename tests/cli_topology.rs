//! `meterline topology apply|describe` and the CLI's one-line errors, against
//! the real broker.

mod common;

use common::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn apply_twice_changes_nothing_the_second_time_and_reports_drift() {
    let w = World::new("apply", "");
    let first = w.run(&["topology", "apply"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = stdout(&first);
    let created = out.lines().filter(|l| l.starts_with("created")).count();
    assert_eq!(created, 41, "{out}");
    assert!(
        out.contains(&format!("created  {}usage.events", w.ns)),
        "{out}"
    );

    let second = w.run(&["topology", "apply"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let out = stdout(&second);
    assert_eq!(
        out.trim(),
        "topology: no change (41 topics up to date)",
        "{out}"
    );

    // The file now wants more partitions for a dead-letter topic: apply
    // reports the difference and changes nothing.
    let topics = w.dir.path().join("topics.toml");
    let text = std::fs::read_to_string(&topics).unwrap().replace(
        "name = \"meterline.dlq.post\"\n",
        "name = \"meterline.dlq.post\"\npartitions = 5\n",
    );
    std::fs::write(&topics, text).unwrap();
    let third = w.run(&["topology", "apply"]);
    assert!(third.status.success(), "{}", stderr(&third));
    let out = stdout(&third);
    assert!(
        out.contains(&format!(
            "differs  {}meterline.dlq.post: partitions: 5 in the file, {} in the cluster (not changed)",
            w.ns, TEST_PARTITIONS
        )),
        "{out}"
    );
    assert!(out.contains("0 created, 1 differ"), "{out}");
    // Not changed: the topic still has its original partition count.
    let fourth = w.run(&["topology", "apply"]);
    assert!(stdout(&fourth).contains(&format!("{} in the cluster", TEST_PARTITIONS)));
}

#[test]
fn describe_names_all_seven_stages_with_their_topics() {
    let w = World::new("describe", "");
    let o = w.run(&["topology", "describe"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for (stage, input, output) in [
        ("validate", "usage.events", "usage.identified"),
        ("dedupe", "usage.identified", "usage.validated"),
        ("enrich", "usage.validated", "usage.enriched"),
        ("rate", "usage.enriched", "usage.rated"),
        ("aggregate", "usage.rated", "usage.windows"),
        ("post", "usage.windows", "finance.postings"),
        ("invoice", "billing.commands", "finance.invoices"),
    ] {
        let block: String = text
            .split("\n\n")
            .find(|b| b.contains(&format!(". {stage}: ")))
            .unwrap_or_else(|| panic!("no block for {stage}: {text}"))
            .to_string();
        assert!(
            block.contains(&format!("input:   {}{input}", w.ns)),
            "{block}"
        );
        assert!(
            block.contains(&format!("output:  {}{output}", w.ns)),
            "{block}"
        );
        assert!(
            block.contains(&format!("dlq:     {}meterline.dlq.{stage}", w.ns)),
            "{block}"
        );
        assert!(block.contains("store:"), "{block}");
    }
    let m = w.run(&["topology", "describe", "--mermaid"]);
    let mermaid = stdout(&m);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    for s in all_stages() {
        assert!(mermaid.contains(&format!("{s}[[{s}]]")), "{mermaid}");
    }
}

#[test]
fn missing_config_file_is_one_line_naming_it() {
    let o = std::process::Command::new(bin())
        .args(["--config", "missing.toml", "topology", "describe"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn unknown_key_is_one_line_naming_it() {
    let w = World::new("unknownkey", "[validate]\ndedupe_horizon_dayz = 3\n");
    let o = w.run(&["topology", "describe"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("dedupe_horizon_dayz"), "{e}");
}

#[test]
fn unreachable_broker_is_one_line_naming_the_address() {
    let w = World::new("unreachable", "");
    let text = std::fs::read_to_string(&w.config_path)
        .unwrap()
        .replace(&bootstrap(), "127.0.0.1:1")
        .replace("[kafka]\n", "[kafka]\nrequest_timeout_ms = 2000\n");
    std::fs::write(&w.config_path, text).unwrap();
    let o = w.run(&["topology", "apply"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("127.0.0.1:1"), "{e}");
}

#[test]
fn missing_topic_is_one_line_naming_it() {
    // Topics never applied in this namespace: the stage refuses to start.
    let w = World::new("notopics", "");
    let o = w.run(&["run", "--stage", "validate"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    let last = e.trim().lines().last().unwrap_or("");
    assert!(
        last.contains(&format!("{}usage.events", w.ns)) || last.contains("does not exist"),
        "{e}"
    );
    assert!(last.contains("topology apply"), "{e}");
}

#[test]
fn dump_prints_any_topic_as_json_lines_with_exact_numbers() {
    let w = World::new("dump", "");
    let applied = w.run(&["topology", "apply"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let topic = format!("{}usage.events", w.ns);
    // One key, so the three records share a partition and keep their order.
    let key = b"cust-1".to_vec();
    produce(
        &topic,
        &[
            (
                Some(key.clone()),
                Some(
                    br#"{"id":"e1","data":{"tokens":1234567890.123456789012345,"amount":"0.10"}}"#
                        .to_vec(),
                ),
                vec![("ce_source".to_string(), b"loadgen".to_vec())],
            ),
            (Some(key.clone()), Some(vec![0, 0, 0, 0, 7, 2]), vec![]),
            (Some(key), None, vec![]),
        ],
    );
    let o = w.run(&["topology", "dump", "usage.events"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!("3 record(s) of {topic}")),
        "{}",
        stderr(&o)
    );
    let offsets: Vec<i64> = lines
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert!(lines.iter().all(|l| l["topic"] == topic.as_str()));
    assert_eq!(lines[0]["key"], serde_json::json!({"text": "cust-1"}));
    assert_eq!(
        lines[0]["headers"],
        serde_json::json!([["ce_source", "loadgen"]])
    );
    // The number is printed as it was written, not through a float.
    assert!(
        stdout(&o).contains(r#""tokens":1234567890.123456789012345"#),
        "{}",
        stdout(&o)
    );
    assert_eq!(lines[0]["value"]["data"]["amount"], "0.10");
    assert_eq!(
        lines[1]["value"],
        serde_json::json!({"hex": "000000000702"})
    );
    assert_eq!(lines[2]["value"], serde_json::Value::Null);

    let limited = w.run(&["topology", "dump", &topic, "--limit", "2"]);
    assert!(limited.status.success(), "{}", stderr(&limited));
    assert_eq!(stdout(&limited).lines().count(), 2);
    assert!(
        stderr(&limited).contains("stopped at --limit 2"),
        "{}",
        stderr(&limited)
    );

    let bad = w.run(&["topology", "dump", "usage.events", "--partition", "99"]);
    assert!(!bad.status.success());
    let e = stderr(&bad);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("no partition 99"), "{e}");
}
