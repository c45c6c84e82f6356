//! The seven stages, one folder each. A stage is a [`crate::runtime::Processor`]:
//! its logic and unit tests live in its folder, the exactly-once loop it runs
//! in lives in [`crate::runtime`].

pub mod aggregate;
pub mod dedupe;
pub mod enrich;
pub mod invoice;
pub mod post;
pub mod rate;
pub mod validate;

#[cfg(test)]
pub(crate) mod fixtures;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::runtime::{self, Processor, RuntimeError, StageStatus};
use crate::topology;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("stage {0} is not built yet (this version runs: {1})")]
    NotBuilt(String, String),
    #[error("stage {stage}: {message}")]
    Setup { stage: String, message: String },
    #[error("starting a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A stage's loop, ready to run on its thread.
type Runner = Box<
    dyn FnOnce(Arc<Config>, Arc<AtomicBool>, Arc<StageStatus>) -> Result<(), RuntimeError> + Send,
>;

/// How a stage is built: its processor's spec name and its loop.
type Builder = fn(&Config) -> Result<(&'static str, Runner), String>;

fn runner<P: Processor>(processor: P) -> (&'static str, Runner) {
    let name = processor.spec().name;
    let run: Runner = Box::new(move |config, shutdown, status| {
        runtime::run_stage(config, processor, shutdown, status)
    });
    (name, run)
}

/// The stage registry: one builder per stage of [`topology::STAGES`] (which
/// names them and their topics and stores), in the same order; a test
/// holds the two together.
const BUILDERS: [Builder; 7] = [
    |c| {
        validate::ValidateProcessor::new(c)
            .map(runner)
            .map_err(|e| e.to_string())
    },
    |c| Ok(runner(dedupe::DedupeProcessor::new(c))),
    |c| {
        enrich::EnrichProcessor::new(c)
            .map(runner)
            .map_err(|e| e.to_string())
    },
    |c| Ok(runner(rate::RateProcessor::new(c))),
    |c| Ok(runner(aggregate::AggregateProcessor::new(c))),
    |c| Ok(runner(post::PostProcessor::new(c))),
    |c| Ok(runner(invoice::InvoiceProcessor::new(c))),
];

/// Stages this build can run, in pipeline order, separated by spaces
/// (`meterline stages` prints it and deploy/local/demo word-splits it into
/// `--stage` arguments).
pub fn runnable() -> String {
    let names: Vec<&str> = topology::STAGES.iter().map(|s| s.name).collect();
    names.join(" ")
}

/// Starts a stage on its own thread. If it fails, it sets `shutdown` so the
/// rest of the process stops too (a supervisor restarts the whole process).
pub fn spawn(
    name: &str,
    config: Arc<Config>,
    shutdown: Arc<AtomicBool>,
    status: Arc<StageStatus>,
) -> Result<JoinHandle<Result<(), RuntimeError>>, SpawnError> {
    let build = topology::STAGES
        .iter()
        .position(|s| s.name == name)
        .and_then(|i| BUILDERS.get(i))
        .ok_or_else(|| SpawnError::NotBuilt(name.to_string(), runnable()))?;
    let (_, run) = build(&config).map_err(|message| SpawnError::Setup {
        stage: name.to_string(),
        message,
    })?;
    let handle = std::thread::Builder::new()
        .name(format!("stage-{name}"))
        .spawn(move || guard(run(config, shutdown.clone(), status), &shutdown))?;
    Ok(handle)
}

fn guard(r: Result<(), RuntimeError>, shutdown: &AtomicBool) -> Result<(), RuntimeError> {
    if r.is_err() {
        shutdown.store(true, Ordering::SeqCst);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_builds_every_stage_of_the_topology_in_order() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let config = Config::from_parts("", "test", &[], dir).unwrap();
        assert_eq!(topology::STAGES.len(), BUILDERS.len());
        for (spec, build) in topology::STAGES.iter().zip(BUILDERS) {
            let (name, _) = build(&config).unwrap();
            assert_eq!(name, spec.name);
        }
        assert_eq!(
            runnable(),
            "validate dedupe enrich rate aggregate post invoice"
        );
        let err = spawn("nope", Arc::new(config), Arc::default(), Arc::default()).unwrap_err();
        assert!(err
            .to_string()
            .contains("validate dedupe enrich rate aggregate post invoice"));
    }
}
