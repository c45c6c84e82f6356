//! Recovery from a producer that cannot go on.
//!
//! librdkafka raises some fatal transaction errors that are not fencing: an
//! abort answered INVALID_TXN_STATE by the coordinator (librdkafka#4849,
//! seen against Kafka 4.1), an abort that never completes. No other
//! instance took over, so stopping the stage would only wait for a
//! supervisor to do what this does in place: a new producer with the same
//! transactional.id, whose `init_transactions` fences the old one and
//! completes or aborts whatever it left open on the broker.
//!
//! Fencing is never recovered from: a fatal error whose cause (the
//! producer's own fatal error, when the call reported only "fatal") is
//! fencing stops the stage, or a zombie would fence the instance that
//! replaced it.
//!
//! The failed call's outcome is unknown here (a commit may have gone
//! through), Kafka's is not: every partition is reopened from what Kafka
//! holds, as after a restart: stores restored from their changelogs, the
//! consumer sought to the committed offset.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::Offset;
use tracing::warn;

use super::{
    init_transactions, is_fencing, new_producer, Engine, Processor, StageContext,
    PRODUCER_REPLACEMENTS_IN_A_ROW_MAX,
};
use crate::internal_events::TransactionAborted;

impl<P: Processor> Engine<P> {
    /// Replaces the producer and reopens every partition but `skip` (being
    /// lost); stops the stage after [`PRODUCER_REPLACEMENTS_IN_A_ROW_MAX`]
    /// replacements without a commit in between.
    pub(super) fn replace_producer(
        &mut self,
        cause: &'static str,
        message: &str,
        skip: Option<&[i32]>,
        consumer: &BaseConsumer<StageContext<P>>,
    ) {
        // A produce call reports only "fatal" (__FATAL); the producer keeps
        // the cause. Fenced by a newer instance (a zombie's case): never fence
        // it back, stop.
        if let Some((code, why)) = self.producer.client().fatal_error() {
            if is_fencing(code) {
                self.fatal = Some(format!(
                    "{cause}: {why} (fenced: a newer instance with the same transactional.id runs)"
                ));
                return;
            }
        }
        TransactionAborted {
            stage: self.spec.name,
            cause: "producer_replaced",
            error: message,
        }
        .emit(&self.metrics);
        self.replacements_in_a_row += 1;
        if self.replacements_in_a_row > PRODUCER_REPLACEMENTS_IN_A_ROW_MAX {
            self.fatal = Some(format!(
                "{cause}: {message} ({PRODUCER_REPLACEMENTS_IN_A_ROW_MAX} producers replaced in a row without a commit)"
            ));
            return;
        }
        if let Err(m) = self.swap_producer() {
            self.fatal = Some(format!("replacing the producer after {cause}: {m}"));
            return;
        }
        self.txn = None;
        self.txn_inputs.clear();
        self.processor.on_rollback();
        if let Err(m) = self.reopen_partitions(skip, consumer) {
            self.fatal = Some(m);
        }
    }

    /// The old producer is dropped (its purged records report to the
    /// tracker, which is then emptied) before the new one fences it.
    fn swap_producer(&mut self) -> Result<(), String> {
        let fresh = new_producer(&self.config, &self.transactional_id, &self.tracker)
            .map_err(|e| e.to_string())?;
        drop(std::mem::replace(&mut self.producer, fresh));
        let _ = self.tracker.take();
        if self.transactional() {
            init_transactions(&self.producer, &self.config, &self.transactional_id)?;
        }
        warn!(
            stage = self.spec.name,
            transactional_id = %self.transactional_id,
            "producer replaced after a fatal transaction error; reopening the partitions from Kafka"
        );
        Ok(())
    }

    fn reopen_partitions(
        &mut self,
        skip: Option<&[i32]>,
        consumer: &BaseConsumer<StageContext<P>>,
    ) -> Result<(), String> {
        let parts: Vec<i32> = self.parts.keys().copied().collect();
        for p in parts {
            if skip.is_some_and(|s| s.contains(&p)) {
                continue;
            }
            self.close_partition(p);
            self.open_partition(p, consumer)
                .map_err(|e| format!("reopening partition {p}: {e}"))?;
            let offset = self
                .parts
                .get(&p)
                .and_then(|part| part.committed)
                .map(Offset::Offset)
                .unwrap_or(Offset::Beginning);
            consumer
                .seek(&self.input_topic, p, offset, self.call_timeout())
                .map_err(|e| format!("rewinding partition {p} to {offset:?}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode as Code;

    use super::super::is_fencing;

    #[test]
    fn only_another_instance_taking_over_stops_the_stage() {
        for code in [
            Code::Fenced,
            Code::ProducerFenced,
            Code::InvalidProducerEpoch,
            Code::TransactionalIdAuthorizationFailed,
        ] {
            assert!(is_fencing(code), "{code:?}");
        }
        for code in [
            Code::InvalidTransactionalState,
            Code::Fatal,
            Code::RequestTimedOut,
        ] {
            assert!(!is_fencing(code), "{code:?} is recovered by a new producer");
        }
    }
}
