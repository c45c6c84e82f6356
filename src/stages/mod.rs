//! The five stages, one folder each. A stage is a [`crate::runtime::Processor`]:
//! its logic and unit tests live in its folder, the exactly-once loop it runs
//! in lives in [`crate::runtime`].

pub mod aggregate;
pub mod enrich;
pub mod post;
pub mod rate;
pub mod validate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::runtime::{self, RuntimeError, StageStatus};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("stage {0} is not built yet (this version runs: {1})")]
    NotBuilt(String, &'static str),
    #[error("stage {stage}: {message}")]
    Setup { stage: String, message: String },
    #[error("starting a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Stages this build can run, separated by spaces (`meterline stages` prints
/// it and deploy/local/demo word-splits it into `--stage` arguments).
pub const RUNNABLE: &str = "validate enrich rate aggregate post";

/// Starts a stage on its own thread. If it fails, it sets `shutdown` so the
/// rest of the process stops too (a supervisor restarts the whole process).
pub fn spawn(
    name: &str,
    config: Arc<Config>,
    shutdown: Arc<AtomicBool>,
    status: Arc<StageStatus>,
) -> Result<JoinHandle<Result<(), RuntimeError>>, SpawnError> {
    let setup = |message: String| SpawnError::Setup {
        stage: name.to_string(),
        message,
    };
    let thread = std::thread::Builder::new().name(format!("stage-{name}"));
    let handle = match name {
        "validate" => {
            let processor =
                validate::ValidateProcessor::new(&config).map_err(|e| setup(e.to_string()))?;
            thread.spawn(move || {
                guard(
                    runtime::run_stage(config, processor, shutdown.clone(), status),
                    &shutdown,
                )
            })?
        }
        "enrich" => {
            let processor =
                enrich::EnrichProcessor::new(&config).map_err(|e| setup(e.to_string()))?;
            thread.spawn(move || {
                guard(
                    runtime::run_stage(config, processor, shutdown.clone(), status),
                    &shutdown,
                )
            })?
        }
        "rate" => {
            let processor = rate::RateProcessor::new(&config);
            thread.spawn(move || {
                guard(
                    runtime::run_stage(config, processor, shutdown.clone(), status),
                    &shutdown,
                )
            })?
        }
        "aggregate" => {
            let processor = aggregate::AggregateProcessor::new(&config);
            thread.spawn(move || {
                guard(
                    runtime::run_stage(config, processor, shutdown.clone(), status),
                    &shutdown,
                )
            })?
        }
        "post" => {
            let processor = post::PostProcessor::new(&config);
            thread.spawn(move || {
                guard(
                    runtime::run_stage(config, processor, shutdown.clone(), status),
                    &shutdown,
                )
            })?
        }
        other => return Err(SpawnError::NotBuilt(other.to_string(), RUNNABLE)),
    };
    Ok(handle)
}

fn guard(r: Result<(), RuntimeError>, shutdown: &AtomicBool) -> Result<(), RuntimeError> {
    if r.is_err() {
        shutdown.store(true, Ordering::SeqCst);
    }
    r
}
