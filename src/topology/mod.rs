//! The topology: topics as declared in `topology/topics.toml`, and the stage
//! graph of DESIGN.md (which stage reads, writes, dead-letters and keeps what).
//!
//! `apply` creates missing topics and reports differences without changing
//! anything that exists; `describe` prints the graph as text or Mermaid.

pub mod apply;
pub mod counts;
pub mod dump;
pub mod postings;
pub mod postings_export;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{Config, ConfigError};

/// Topic names of the contract in DESIGN.md (before the namespace prefix).
pub mod names {
    pub const EVENTS: &str = "usage.events";
    /// Not named in DESIGN.md: validate's valid events keyed by their
    /// identity (source, id), the repartition that lets dedupe see every copy
    /// of an event on one partition, whatever its subject.
    pub const IDENTIFIED: &str = "usage.identified";
    pub const VALIDATED: &str = "usage.validated";
    pub const ENRICHED: &str = "usage.enriched";
    pub const RATED: &str = "usage.rated";
    /// Not named in DESIGN.md: aggregate's closed windows, the input of post.
    pub const WINDOWS: &str = "usage.windows";
    pub const POSTINGS: &str = "finance.postings";
    pub const EXCEPTIONS: &str = "usage.exceptions";
    pub const REF_CUSTOMERS: &str = "ref.customers";
    pub const REF_SUBSCRIPTIONS: &str = "ref.subscriptions";
    pub const REF_PLANS: &str = "ref.plans";
    pub const REF_TAX_RATES: &str = "ref.tax_rates";
    /// Operator commands, post's drafts and enrich's parked-event notices,
    /// keyed by customer id: the invoice stage's input.
    pub const COMMANDS: &str = "billing.commands";
    /// Invoice documents, compacted, keyed by invoice id.
    pub const INVOICES: &str = "finance.invoices";
    /// ledger-sync's acknowledgements, compacted, keyed by idempotency key.
    pub const POSTING_ACKS: &str = "finance.postings.acks";
    /// The ledger's dead letters replayed (`meterline replay --from
    /// meterline.dlq.ledger`): ledger-sync's third input.
    pub const LEDGER_RETRY: &str = "finance.postings.ledger_retry";
    /// The name ledger-sync goes by in dead letters, metrics and its DLQ
    /// (`meterline.dlq.ledger`). Not a stage: its state is the ledger database.
    pub const LEDGER: &str = "ledger";

    /// The dead-letter topic of a stage.
    pub fn dlq(stage: &str) -> String {
        format!("meterline.dlq.{stage}")
    }

    /// The compacted changelog topic of a stage's store.
    pub fn changelog(stage: &str, store: &str) -> String {
        format!("meterline.{stage}.{store}.changelog")
    }
}

/// One stage of the pipeline.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: &'static str,
    pub input: &'static str,
    pub outputs: &'static [&'static str],
    /// Compacted topics materialised as read-only tables on every instance.
    pub tables: &'static [&'static str],
    pub stores: &'static [&'static str],
    pub summary: &'static str,
}

impl StageSpec {
    pub fn dlq(&self) -> String {
        names::dlq(self.name)
    }
    pub fn changelogs(&self) -> Vec<String> {
        self.stores
            .iter()
            .map(|s| names::changelog(self.name, s))
            .collect()
    }
    /// Every topic this stage touches, before the namespace prefix.
    pub fn topics(&self) -> Vec<String> {
        let mut t = vec![self.input.to_string()];
        t.extend(self.outputs.iter().map(|s| s.to_string()));
        t.extend(self.tables.iter().map(|s| s.to_string()));
        t.push(self.dlq());
        t.extend(self.changelogs());
        t
    }
}

/// The seven stages, in pipeline order.
pub const STAGES: &[StageSpec] = &[
    StageSpec {
        name: "validate",
        input: names::EVENTS,
        outputs: &[names::IDENTIFIED],
        tables: &[],
        stores: &["sequence", "lineage", "counters"],
        summary: "decode CloudEvents and check them; each valid event claimed under (source, id)",
    },
    StageSpec {
        name: "dedupe",
        input: names::IDENTIFIED,
        // Verdicts go back to usage.identified, to the claim's origin
        // partition, where the same stage releases them in order.
        outputs: &[names::IDENTIFIED, names::VALIDATED],
        tables: &[],
        stores: &["dedupe", "release", "lineage", "counters"],
        summary: "first copy of each (source, id) on to usage.validated, in usage.events order",
    },
    StageSpec {
        name: "enrich",
        input: names::VALIDATED,
        // billing.commands: parked-event notices for the invoice stage.
        outputs: &[names::ENRICHED, names::EXCEPTIONS, names::COMMANDS],
        tables: &[
            names::REF_CUSTOMERS,
            names::REF_SUBSCRIPTIONS,
            names::REF_PLANS,
        ],
        stores: &["parked", "lineage", "counters"],
        summary:
            "match customer, subscription and plan version in force; park what cannot be matched",
    },
    StageSpec {
        name: "rate",
        input: names::ENRICHED,
        outputs: &[names::RATED],
        tables: &[],
        stores: &["segments", "lineage"],
        summary: "price each event as price(after) - price(before) of its rating segment",
    },
    StageSpec {
        name: "aggregate",
        input: names::RATED,
        outputs: &[names::WINDOWS],
        tables: &[
            names::REF_CUSTOMERS,
            names::REF_SUBSCRIPTIONS,
            names::REF_PLANS,
        ],
        stores: &["windows", "lineage"],
        summary: "event-time windows per day and billing period, emitted once when closed",
    },
    StageSpec {
        name: "post",
        input: names::WINDOWS,
        // Accruals and control totals are posted at once; what an invoice's
        // approval posts goes to the invoice stage as drafts.
        outputs: &[names::POSTINGS, names::COMMANDS],
        tables: &[],
        stores: &["ledger", "lineage"],
        summary: "balanced, rounded, idempotent accruals and control totals; invoice drafts",
    },
    StageSpec {
        name: "invoice",
        input: names::COMMANDS,
        outputs: &[names::POSTINGS, names::INVOICES],
        tables: &[names::REF_TAX_RATES, names::REF_PLANS],
        stores: &["invoices"],
        summary:
            "invoices from drafts, held or approved by policy and commands; tax, credits, disputes",
    },
];

/// Looks a stage up by name.
pub fn stage(name: &str) -> Option<&'static StageSpec> {
    STAGES.iter().find(|s| s.name == name)
}

/// `cleanup.policy` of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// `message.timestamp.type` of a topic: which time a record's timestamp is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TimestampType {
    /// The broker stamps each record when it appends it (DESIGN.md: every
    /// meterline topic, so retention counts from when a record was written,
    /// never from an event time a producer put on it).
    LogAppendTime,
    /// The producer's timestamp is kept (Kafka's default).
    CreateTime,
}

impl TimestampType {
    pub fn as_kafka(self) -> &'static str {
        match self {
            TimestampType::LogAppendTime => "LogAppendTime",
            TimestampType::CreateTime => "CreateTime",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    partitions: i32,
    replication_factor: i32,
    min_insync_replicas: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicEntry {
    name: String,
    #[serde(default)]
    partitions: Option<i32>,
    #[serde(default)]
    replication_factor: Option<i32>,
    #[serde(default)]
    min_insync_replicas: Option<i32>,
    cleanup_policy: CleanupPolicy,
    #[serde(default)]
    retention_ms: Option<i64>,
    #[serde(default)]
    message_timestamp_type: Option<TimestampType>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    defaults: Defaults,
    topic: Vec<TopicEntry>,
}

/// The topic config naming which time record timestamps are.
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";

/// A topic as it should exist in the cluster (namespace applied).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// Name in the file.
    pub logical: String,
    /// Name in the cluster (namespace + logical).
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    pub cleanup_policy: CleanupPolicy,
    /// None: the broker's default.
    pub retention_ms: Option<i64>,
    /// None: the broker's default (`log.message.timestamp.type`, CreateTime
    /// unless changed).
    pub message_timestamp_type: Option<TimestampType>,
}

impl TopicSpec {
    /// The topic configs meterline manages.
    pub fn configs(&self) -> BTreeMap<&'static str, String> {
        let mut c = BTreeMap::new();
        c.insert("cleanup.policy", self.cleanup_policy.as_kafka().to_string());
        c.insert("min.insync.replicas", self.min_insync_replicas.to_string());
        if let Some(r) = self.retention_ms {
            c.insert("retention.ms", r.to_string());
        }
        if let Some(t) = self.message_timestamp_type {
            c.insert(MESSAGE_TIMESTAMP_TYPE, t.as_kafka().to_string());
        }
        c
    }
}

/// All declared topics, in file order.
#[derive(Debug, Clone)]
pub struct Topology {
    pub topics: Vec<TopicSpec>,
}

impl Topology {
    /// Loads the topics file named by the config and checks it against the stage graph.
    pub fn load(config: &Config) -> Result<Topology, ConfigError> {
        let path = config.resolve(&config.topology.topics_file);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Topology::parse(&text, &path, &config.topology.namespace)
    }

    pub fn parse(text: &str, path: &Path, namespace: &str) -> Result<Topology, ConfigError> {
        let origin = path.display().to_string();
        let file: TopicsFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.clone(),
            message: e.to_string().lines().next().unwrap_or("").to_string(),
        })?;
        let d = &file.defaults;
        let mut topics = Vec::with_capacity(file.topic.len());
        for t in &file.topic {
            if topics.iter().any(|x: &TopicSpec| x.logical == t.name) {
                return Err(ConfigError::Parse {
                    path: origin,
                    message: format!("topic {} is declared twice", t.name),
                });
            }
            let spec = TopicSpec {
                logical: t.name.clone(),
                name: format!("{namespace}{}", t.name),
                partitions: t.partitions.unwrap_or(d.partitions),
                replication_factor: t.replication_factor.unwrap_or(d.replication_factor),
                min_insync_replicas: t.min_insync_replicas.unwrap_or(d.min_insync_replicas),
                cleanup_policy: t.cleanup_policy,
                retention_ms: t.retention_ms,
                message_timestamp_type: t.message_timestamp_type,
            };
            if spec.partitions < 1 || spec.replication_factor < 1 || spec.min_insync_replicas < 1 {
                return Err(ConfigError::Parse {
                    path: origin,
                    message: format!(
                        "topic {}: partitions, replication_factor and min_insync_replicas must be >= 1",
                        t.name
                    ),
                });
            }
            topics.push(spec);
        }
        let topology = Topology { topics };
        topology.check(&origin)?;
        Ok(topology)
    }

    pub fn get(&self, logical: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.logical == logical)
    }

    /// Every topic of the stage graph is declared, and each stage's changelogs
    /// have as many partitions as its input (state is partition-local).
    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let partitions = |t: &str| self.get(t).map(|t| t.partitions);
        let (identified, events) = (partitions(names::IDENTIFIED), partitions(names::EVENTS));
        if let (Some(i), Some(e)) = (identified, events) {
            if i != e {
                return Err(ConfigError::Parse {
                    path: origin.to_string(),
                    message: format!(
                        "{} has {i} partitions but {} has {e}; they must match (dedupe sends each verdict to the partition its event came from)",
                        names::IDENTIFIED,
                        names::EVENTS
                    ),
                });
            }
        }
        for s in STAGES {
            for t in s.topics() {
                if self.get(&t).is_none() {
                    return Err(ConfigError::Parse {
                        path: origin.to_string(),
                        message: format!("stage {} needs topic {t}, which is not declared", s.name),
                    });
                }
            }
            let input = self.get(s.input).map(|t| t.partitions).unwrap_or(0);
            for c in s.changelogs() {
                let p = self.get(&c).map(|t| t.partitions).unwrap_or(0);
                if p != input {
                    return Err(ConfigError::Parse {
                        path: origin.to_string(),
                        message: format!(
                            "changelog {c} has {p} partitions but the input {} of stage {} has {input}; they must match",
                            s.input, s.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The stage graph as text: one block per stage.
    pub fn describe_text(&self) -> String {
        let mut out = String::new();
        out.push_str("meterline stage graph (input -> stage -> outputs)\n\n");
        for (i, s) in STAGES.iter().enumerate() {
            out.push_str(&format!("{}. {}: {}\n", i + 1, s.name, s.summary));
            out.push_str(&format!("   input:   {}\n", self.show(s.input)));
            for o in s.outputs {
                out.push_str(&format!("   output:  {}\n", self.show(o)));
            }
            for t in s.tables {
                out.push_str(&format!("   table:   {}\n", self.show(t)));
            }
            out.push_str(&format!("   dlq:     {}\n", self.show(&s.dlq())));
            for (store, cl) in s.stores.iter().zip(s.changelogs()) {
                out.push_str(&format!(
                    "   store:   {store} (RocksDB, changelog {})\n",
                    self.show(&cl)
                ));
            }
            out.push('\n');
        }
        out
    }

    fn show(&self, logical: &str) -> String {
        match self.get(logical) {
            Some(t) => format!(
                "{} [{}p, {}{}]",
                t.name,
                t.partitions,
                t.cleanup_policy.as_kafka(),
                match t.retention_ms {
                    Some(-1) => ", kept forever".to_string(),
                    Some(ms) => format!(", {}", human_ms(ms)),
                    None => String::new(),
                }
            ),
            None => logical.to_string(),
        }
    }

    /// The stage graph as a Mermaid flowchart.
    pub fn describe_mermaid(&self) -> String {
        let id = |s: &str| s.replace(['.', '-'], "_");
        let mut out = String::from("flowchart LR\n");
        for s in STAGES {
            out.push_str(&format!("  {}[[{}]]\n", s.name, s.name));
            let input = self
                .get(s.input)
                .map(|t| t.name.clone())
                .unwrap_or_default();
            out.push_str(&format!("  {}([{}]) --> {}\n", id(&input), input, s.name));
            for o in s.outputs {
                let n = self.get(o).map(|t| t.name.clone()).unwrap_or_default();
                out.push_str(&format!("  {} --> {}([{}])\n", s.name, id(&n), n));
            }
            for t in s.tables {
                let n = self.get(t).map(|t| t.name.clone()).unwrap_or_default();
                out.push_str(&format!("  {}[({})] -.table.-> {}\n", id(&n), n, s.name));
            }
            let dlq = self
                .get(&s.dlq())
                .map(|t| t.name.clone())
                .unwrap_or_default();
            out.push_str(&format!(
                "  {} -. reject .-> {}([{}])\n",
                s.name,
                id(&dlq),
                dlq
            ));
            for (store, cl) in s.stores.iter().zip(s.changelogs()) {
                let n = self.get(&cl).map(|t| t.name.clone()).unwrap_or_default();
                out.push_str(&format!(
                    "  {} <--> {}_{}[(\"{} store / {}\")]\n",
                    s.name, s.name, store, store, n
                ));
            }
        }
        out
    }
}

fn human_ms(ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    const HOUR_MS: i64 = 3_600_000;
    if ms % DAY_MS == 0 {
        format!("{}d", ms / DAY_MS)
    } else if ms % HOUR_MS == 0 {
        format!("{}h", ms / HOUR_MS)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> Topology {
        let text = include_str!("../../topology/topics.toml");
        Topology::parse(text, Path::new("topics.toml"), "ns.").unwrap()
    }

    #[test]
    fn bundled_file_declares_every_topic_of_the_graph() {
        let t = bundled();
        for s in STAGES {
            for topic in s.topics() {
                let spec = t.get(&topic).unwrap();
                assert_eq!(spec.name, format!("ns.{topic}"));
            }
        }
        assert_eq!(
            t.get("ref.plans").unwrap().cleanup_policy,
            CleanupPolicy::Compact
        );
        assert_eq!(t.get("usage.events").unwrap().partitions, 6);
    }

    #[test]
    fn every_bundled_topic_is_stamped_with_append_time() {
        // DESIGN.md: record timestamps are the append time, never the event
        // time, so retention never deletes a backfilled event before a stage
        // reads it. The Kubernetes copy must say the same.
        for (file, text) in [
            ("topology", include_str!("../../topology/topics.toml")),
            (
                "kubernetes",
                include_str!("../../deploy/kubernetes/config/topics.toml"),
            ),
        ] {
            let t = Topology::parse(text, Path::new(file), "ns.").unwrap();
            assert_eq!(t.topics.len(), 41, "{file}");
            for topic in &t.topics {
                assert_eq!(
                    topic.message_timestamp_type,
                    Some(TimestampType::LogAppendTime),
                    "{file}: {}",
                    topic.logical
                );
                assert_eq!(
                    topic
                        .configs()
                        .get(MESSAGE_TIMESTAMP_TYPE)
                        .map(String::as_str),
                    Some("LogAppendTime"),
                    "{file}: {}",
                    topic.logical
                );
            }
        }
    }

    #[test]
    fn timestamp_type_is_optional_and_checked() {
        let base = "[defaults]\npartitions = 1\nreplication_factor = 1\nmin_insync_replicas = 1\n";
        let topic = |extra: &str| {
            format!("{base}[[topic]]\nname = \"x\"\ncleanup_policy = \"delete\"\n{extra}")
        };
        let file: TopicsFile = toml::from_str(&topic("")).unwrap();
        assert_eq!(file.topic[0].message_timestamp_type, None);
        let file: TopicsFile =
            toml::from_str(&topic("message_timestamp_type = \"CreateTime\"\n")).unwrap();
        assert_eq!(
            file.topic[0].message_timestamp_type,
            Some(TimestampType::CreateTime)
        );
        assert!(
            toml::from_str::<TopicsFile>(&topic("message_timestamp_type = \"EventTime\"\n"))
                .is_err()
        );
    }

    #[test]
    fn changelog_partitions_must_match_input() {
        let text = include_str!("../../topology/topics.toml").replace(
            "name = \"meterline.rate.segments.changelog\"\n",
            "name = \"meterline.rate.segments.changelog\"\npartitions = 3\n",
        );
        let err = Topology::parse(&text, Path::new("t.toml"), "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("meterline.rate.segments.changelog"), "{err}");
    }

    #[test]
    fn identified_partitions_must_match_events() {
        // dedupe sends each verdict to its event's usage.events partition
        // number: usage.identified must have every one of them.
        let text = include_str!("../../topology/topics.toml").replace(
            "name = \"usage.events\"\n",
            "name = \"usage.events\"\npartitions = 12\n",
        );
        let err = Topology::parse(&text, Path::new("t.toml"), "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("usage.identified has 6 partitions but usage.events has 12"),
            "{err}"
        );
    }

    #[test]
    fn missing_topic_is_named() {
        let text = include_str!("../../topology/topics.toml").replace(
            "name = \"meterline.dlq.post\"",
            "name = \"meterline.dlq.poste\"",
        );
        let err = Topology::parse(&text, Path::new("t.toml"), "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("meterline.dlq.post,") || err.contains("meterline.dlq.post "),
            "{err}"
        );
    }

    #[test]
    fn describe_names_all_stages_and_their_topics() {
        let t = bundled();
        let text = t.describe_text();
        let mermaid = t.describe_mermaid();
        for s in STAGES {
            assert!(text.contains(&format!("{}: ", s.name)));
            assert!(mermaid.contains(&format!("{}[[{}]]", s.name, s.name)));
            for topic in s.topics() {
                assert!(text.contains(&format!("ns.{topic}")), "{topic}");
                assert!(mermaid.contains(&format!("ns.{topic}")), "{topic}");
            }
        }
    }
}
