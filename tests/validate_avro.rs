//! The Avro path against the real broker and a real Confluent-compatible
//! schema registry (Apicurio, started by deploy/local/test): `topology apply`
//! registers schemas/usage.events-value.avsc; Avro events in the Confluent
//! wire format are validated; an unknown schema id and an undecodable body
//! are dead-lettered with their own reason codes.

mod common;

use apache_avro::types::Value;
use common::*;

const VALID: usize = 20;
const BAD_EACH: usize = 10;

fn wire(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&schema_id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn avro_events_are_validated_through_the_registry() {
    let Some(url) = registry_url() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the registry (deploy/local/test starts it)"
        );
        eprintln!("skipped: METERLINE_TEST_REGISTRY is not set (deploy/local/test sets it)");
        return;
    };
    let w = World::new("avro", &format!("[registry]\nurl = \"{url}\"\n"));
    let out = w.run(&["topology", "apply"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("schema   {}usage.events-value -> id ", w.ns)))
        .unwrap_or_else(|| panic!("schema not registered: {text}"));
    let id: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();

    let schema = apache_avro::Schema::parse_str(
        &std::fs::read_to_string(repo().join("schemas/usage.events-value.avsc")).unwrap(),
    )
    .unwrap();
    let now = now_rfc3339();
    let mut records: Vec<Record> = Vec::new();
    for i in 0..VALID {
        let sub = format!("cust-{}", i % 3);
        let data = Value::Map(
            [
                (
                    "tokens".to_string(),
                    Value::Union(2, Box::new(Value::Long(100 + i as i64))),
                ),
                (
                    "model".to_string(),
                    Value::Union(3, Box::new(Value::String("m".into()))),
                ),
            ]
            .into_iter()
            .collect(),
        );
        let value = Value::Record(vec![
            ("specversion".into(), Value::String("1.0".into())),
            ("id".into(), Value::String(format!("avro-{i}"))),
            ("source".into(), Value::String("avro-src".into())),
            ("type".into(), Value::String("llm.tokens".into())),
            ("subject".into(), Value::String(sub.clone())),
            ("time".into(), Value::String(now.clone())),
            (
                "datacontenttype".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
            ("data".into(), data),
        ]);
        #[allow(deprecated)] // the plain datum encoder is what the Confluent wire format wraps
        let body = apache_avro::to_avro_datum(&schema, value).unwrap();
        records.push((Some(sub.into_bytes()), Some(wire(id, &body)), vec![]));
    }
    for i in 0..BAD_EACH {
        // An id the registry never issued.
        records.push((
            Some(b"cust-x".to_vec()),
            Some(wire(0x7fff_fff0, format!("unknown-{i}").as_bytes())),
            vec![],
        ));
        // A registered id, but bytes that are not an Avro datum of it.
        records.push((
            Some(b"cust-y".to_vec()),
            Some(wire(id, &[0xff; 3])),
            vec![(format!("n{i}"), vec![])],
        ));
    }
    produce(&w.topic("usage.events"), &records);
    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");
    let validated = w.topic("usage.validated");
    let dlq = w.topic("meterline.dlq.validate");
    wait_until("avro events", || {
        read_all(&validated, true).len() == VALID && read_all(&dlq, true).len() == 2 * BAD_EACH
    });
    for r in read_all(&validated, true) {
        let v = r.json();
        assert_eq!(v["origin"]["encoding"], "avro");
        let i: i64 = v["id"]
            .as_str()
            .unwrap()
            .trim_start_matches("avro-")
            .parse()
            .unwrap();
        assert_eq!(v["measures"][0]["value"], (100 + i).to_string());
    }
    let reasons: Vec<String> = read_all(&dlq, true)
        .iter()
        .map(|r| r.header("meterline.reason").unwrap())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "avro_schema_not_found")
            .count(),
        BAD_EACH,
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "avro_decode_failed")
            .count(),
        BAD_EACH,
        "{reasons:?}"
    );
    assert!(terminate(&mut stage).success());
}
