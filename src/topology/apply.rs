//! `meterline topology apply`: make the cluster hold every declared topic.
//!
//! Creates what is missing; for what exists, compares partitions, replication
//! and the configs meterline manages, and reports each difference without
//! changing it (changing partitions would move customers between partitions
//! and orphan their state; deleting loses data). Running it twice changes
//! nothing the second time, and says so.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use super::{TopicSpec, Topology};
use crate::config::Config;
use crate::kafka::{self, ClientError};

/// What apply found and did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    UpToDate,
    /// Exists, but differs from the file in these ways (nothing was changed).
    Differs(Vec<String>),
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub outcomes: Vec<(String, TopicOutcome)>,
    pub schemas: Vec<String>,
}

impl ApplyReport {
    pub fn created(&self) -> usize {
        self.count(|o| matches!(o, TopicOutcome::Created))
    }
    pub fn differing(&self) -> usize {
        self.count(|o| matches!(o, TopicOutcome::Differs(_)))
    }
    pub fn up_to_date(&self) -> usize {
        self.count(|o| matches!(o, TopicOutcome::UpToDate))
    }
    fn count(&self, f: impl Fn(&TopicOutcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, o)| f(o)).count()
    }

    /// Human report, one line per created or differing topic and a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, o) in &self.outcomes {
            match o {
                TopicOutcome::Created => out.push_str(&format!("created  {name}\n")),
                TopicOutcome::Differs(d) => {
                    for line in d {
                        out.push_str(&format!("differs  {name}: {line} (not changed)\n"));
                    }
                }
                TopicOutcome::UpToDate => {}
            }
        }
        for s in &self.schemas {
            out.push_str(&format!("schema   {s}\n"));
        }
        if self.created() == 0 && self.differing() == 0 {
            out.push_str(&format!(
                "topology: no change ({} topics up to date)\n",
                self.up_to_date()
            ));
        } else {
            out.push_str(&format!(
                "topology: {} created, {} differ from the file (left as they are), {} up to date\n",
                self.created(),
                self.differing(),
                self.up_to_date()
            ));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("creating topic {topic}: {message}")]
    Create { topic: String, message: String },
    #[error("reading configs of {topic}: {message}")]
    Describe { topic: String, message: String },
    #[error("schema registry: {0}")]
    Registry(String),
}

/// The cluster's admin client.
type Admin = rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>;

/// Partitions and replication factor of each topic in the cluster.
type Existing = BTreeMap<String, (i32, i32)>;

/// A topic the broker says exists (created a moment ago, by this apply's
/// predecessor or another) may take a while to show in its metadata: how
/// often, and how far apart, apply looks again before reporting it.
const METADATA_SETTLE_ATTEMPTS: u32 = 20;
const METADATA_SETTLE_PAUSE_MS: u64 = 250;

/// The topics of a metadata answer that have no error.
fn existing_of(md: &rdkafka::metadata::Metadata) -> Existing {
    md.topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let rf = t
                .partitions()
                .first()
                .map(|p| p.replicas().len() as i32)
                .unwrap_or(0);
            (t.name().to_string(), (t.partitions().len() as i32, rf))
        })
        .collect()
}

/// Waits until every topic of `raced` shows in the metadata, and adds it
/// to `existing`: it existed before this apply, so it is reported as up to
/// date or differing, never as created.
async fn settle(
    admin: &Admin,
    config: &Config,
    raced: &[String],
    existing: &mut Existing,
) -> Result<(), ApplyError> {
    for _ in 0..METADATA_SETTLE_ATTEMPTS {
        let now = existing_of(&kafka::metadata(admin.inner(), config, None)?);
        if raced.iter().all(|t| now.contains_key(t)) {
            existing.extend(now.into_iter().filter(|(t, _)| raced.contains(t)));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(METADATA_SETTLE_PAUSE_MS)).await;
    }
    Err(ApplyError::Create {
        topic: raced.join(", "),
        message: "the broker says it exists, but its metadata does not show it".into(),
    })
}

/// Applies the topology to the cluster named in `config`.
pub async fn apply(config: &Config, topology: &Topology) -> Result<ApplyReport, ApplyError> {
    let admin = kafka::admin(config)?;
    let md = kafka::metadata(admin.inner(), config, None)?;
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    let opts = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));

    let mut report = ApplyReport::default();
    let mut existing = existing_of(&md);
    let raced = create_missing(&admin, &opts, topology, &existing).await?;
    if !raced.is_empty() {
        settle(&admin, config, &raced, &mut existing).await?;
    }
    let actual_configs = describe_present(&admin, &opts, topology, &existing).await?;
    for t in &topology.topics {
        let outcome = outcome_of(t, &existing, &actual_configs);
        report.outcomes.push((t.name.clone(), outcome));
    }

    if let Some(reg) = config.registry.clone() {
        // The registry client is blocking (reqwest::blocking panics on the executor).
        let config = config.clone();
        report.schemas =
            tokio::task::spawn_blocking(move || crate::registry::register_schemas(&config, &reg))
                .await
                .map_err(|e| ApplyError::Registry(e.to_string()))?
                .map_err(|e| ApplyError::Registry(e.to_string()))?;
    }
    Ok(report)
}

/// Creates the topics of the file the cluster does not have, with their
/// configs; one that exists already (created meanwhile, or not yet in the
/// metadata read before) is fine, and returned.
async fn create_missing(
    admin: &Admin,
    opts: &AdminOptions,
    topology: &Topology,
    existing: &Existing,
) -> Result<Vec<String>, ApplyError> {
    let missing: Vec<&TopicSpec> = topology
        .topics
        .iter()
        .filter(|t| !existing.contains_key(&t.name))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let configs: Vec<BTreeMap<&'static str, String>> =
        missing.iter().map(|t| t.configs()).collect();
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .zip(&configs)
        .map(|(t, c)| {
            let mut nt = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication_factor),
            );
            for (k, v) in c {
                nt = nt.set(k, v);
            }
            nt
        })
        .collect();
    let results = admin
        .create_topics(&new_topics, opts)
        .await
        .map_err(|e| ApplyError::Create {
            topic: "(all)".into(),
            message: e.to_string(),
        })?;
    let mut raced = Vec::new();
    for r in results {
        match r {
            Ok(_) => {}
            // It exists, which is what we want; not ours to report as created.
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => raced.push(topic),
            Err((topic, code)) => {
                return Err(ApplyError::Create {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(raced)
}

/// The configs (name -> value) of the file's topics the cluster already has.
async fn describe_present(
    admin: &Admin,
    opts: &AdminOptions,
    topology: &Topology,
    existing: &Existing,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ApplyError> {
    let present: Vec<&TopicSpec> = topology
        .topics
        .iter()
        .filter(|t| existing.contains_key(&t.name))
        .collect();
    let mut actual_configs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if present.is_empty() {
        return Ok(actual_configs);
    }
    let specs: Vec<ResourceSpecifier> = present
        .iter()
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    let described =
        admin
            .describe_configs(&specs, opts)
            .await
            .map_err(|e| ApplyError::Describe {
                topic: "(all)".into(),
                message: e.to_string(),
            })?;
    for (t, r) in present.iter().zip(described) {
        let resource = r.map_err(|e| ApplyError::Describe {
            topic: t.name.clone(),
            message: e.to_string(),
        })?;
        let map = resource
            .entries
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.name, v)))
            .collect();
        actual_configs.insert(t.name.clone(), map);
    }
    Ok(actual_configs)
}

/// What apply did or found for one topic of the file: created, up to date,
/// or how the cluster differs (partitions, replication factor, configs).
fn outcome_of(
    t: &TopicSpec,
    existing: &Existing,
    actual_configs: &BTreeMap<String, BTreeMap<String, String>>,
) -> TopicOutcome {
    let Some(&(partitions, rf)) = existing.get(&t.name) else {
        return TopicOutcome::Created;
    };
    let mut diffs = Vec::new();
    if partitions != t.partitions {
        diffs.push(format!(
            "partitions: {} in the file, {} in the cluster",
            t.partitions, partitions
        ));
    }
    if rf != t.replication_factor {
        diffs.push(format!(
            "replication_factor: {} in the file, {} in the cluster",
            t.replication_factor, rf
        ));
    }
    let actual = actual_configs.get(&t.name);
    for (k, want) in t.configs() {
        let have = actual.and_then(|a| a.get(k)).cloned().unwrap_or_default();
        if have != want {
            diffs.push(format!("{k}: {want} in the file, {have} in the cluster"));
        }
    }
    if diffs.is_empty() {
        TopicOutcome::UpToDate
    } else {
        TopicOutcome::Differs(diffs)
    }
}
