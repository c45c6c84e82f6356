//! The validate stage: the gate where bad telemetry stops.
//!
//! For each record of `usage.events`: refuse it if it is larger than
//! `max_event_bytes` (`event_too_large`), decode it (CloudEvents structured JSON,
//! binary mode, or Confluent Avro via the registry, see [`decode`]), and apply
//! the rules ([`rules`]: attributes, time window, source allow-list, HMAC
//! signature, meter values). Rejects go to `meterline.dlq.validate` with a
//! stable reason code ([`reason`]); each valid event is numbered (`seq`, per
//! input partition, in the `sequence` store) and sent as a claim to
//! `usage.identified`, keyed by its CloudEvents identity (`source`, `id`)
//! ([`crate::contracts::GateRecord`], [`crate::contracts::identity_key`]).
//!
//! Duplicates are not dropped here but by the next stage, dedupe:
//! `usage.events` is keyed by subject, so two copies of one (`source`, `id`)
//! sent with different subjects sit on different partitions and no
//! per-partition store could see both; claimed by identity, every copy lands
//! on one partition of `usage.identified`. dedupe then releases the first
//! copies in `seq` order, so `usage.validated` keeps each partition's order.
//! Validation runs before dedupe: a rejected copy is never claimed, so it
//! never takes the id and a corrected resend is accepted.

use crate::config::Config;
use crate::contracts::{identity_key, GateKind, GateRecord, Origin, ValidatedEvent};
use crate::lineage::{self, Count};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::store::StoreId;
use crate::topology::{self, StageSpec};

use crate::ingest::decode::{AvroDecoder, DecodeError, RawRecord};
use crate::ingest::rules::{MeterIndex, ValidateRules};
use crate::ingest::{decode, reason, rules};

/// The stores' indexes in the stage's store list.
const SEQUENCE: StoreId = 0;
const LINEAGE: StoreId = 1;
const COUNTERS: StoreId = 2;
/// The one key of the `sequence` store: the `seq` the partition's next
/// valid event gets (u64, big-endian; absent = 0).
const NEXT_SEQ_KEY: &[u8] = b"N";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("meters: {0}")]
    Meters(String),
    #[error("validate.hmac_keys_hex.{0}: not hex")]
    HmacKey(String),
    #[error("schema registry: {0}")]
    Registry(String),
}

pub struct ValidateProcessor {
    meters: MeterIndex,
    rules: ValidateRules,
    avro: Option<Box<dyn AvroDecoder>>,
    output_topic: String,
    /// Wall clock minus the event time of the last event validated.
    event_time_lag: prometheus::IntGauge,
}

impl ValidateProcessor {
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let rules = ValidateRules::from_config(&config.validate).map_err(SetupError::HmacKey)?;
        let avro: Option<Box<dyn AvroDecoder>> = match &config.registry {
            Some(reg) => Some(Box::new(
                crate::registry::RegistryAvroDecoder::new(reg)
                    .map_err(|e| SetupError::Registry(e.to_string()))?,
            )),
            None => None,
        };
        Self::with_parts(config, rules, avro)
    }

    /// For tests: explicit rules and Avro decoder.
    pub fn with_parts(
        config: &Config,
        rules: ValidateRules,
        avro: Option<Box<dyn AvroDecoder>>,
    ) -> Result<Self, SetupError> {
        let meters =
            MeterIndex::new(&config.meters).map_err(|e| SetupError::Meters(e.to_string()))?;
        Ok(ValidateProcessor {
            meters,
            rules,
            avro,
            output_topic: config.topic(topology::names::IDENTIFIED),
            event_time_lag: crate::metrics::event_time_lag(SPEC.name),
        })
    }
}

fn reject(r: reason::Reject) -> StageError {
    StageError::Reject {
        code: r.code(),
        message: r.message,
    }
}

/// This stage's entry in the stage table (a constant index: out of range
/// would not compile).
#[allow(clippy::indexing_slicing)]
const SPEC: &StageSpec = &topology::STAGES[0];

impl Processor for ValidateProcessor {
    fn spec(&self) -> &'static StageSpec {
        SPEC
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let raw = RawRecord {
            key: rec.key,
            value: rec.value,
            headers: rec.headers,
        };
        // Before any parsing: a huge record costs nothing more to refuse.
        rules::check_size(&raw, &self.rules).map_err(reject)?;
        let (event, encoding) = match decode::decode(&raw, self.avro.as_deref()) {
            Ok(x) => x,
            Err(DecodeError::Reject(r)) => return Err(reject(r)),
            Err(DecodeError::Retriable(m)) => return Err(StageError::Retriable(m)),
        };
        let origin = Origin {
            topic: rec.topic.to_string(),
            partition: rec.partition,
            offset: rec.offset,
            encoding,
        };
        let validated = rules::validate(event, &raw, &self.meters, &self.rules, ctx.now(), origin)
            .map_err(reject)?;

        self.pass(&validated, rec, ctx)
    }

    fn on_rejected(
        &mut self,
        rec: &InputRecord<'_>,
        code: &'static str,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        let (source, id, time) = lineage::identify_raw(rec.value, rec.headers);
        let day = time.map_or_else(|| lineage::UNKNOWN_DAY.to_string(), lineage::day_of);
        lineage::count(ctx, COUNTERS, &day, [Count::In, Count::Held])?;
        if let (Some(source), Some(id)) = (source, id) {
            let step = lineage::Step {
                outcome: "dead_lettered".into(),
                partition: rec.partition,
                offset: rec.offset,
                reason: Some(code.to_string()),
                detail: serde_json::Value::Null,
            };
            lineage::record_step(ctx, LINEAGE, &source, &id, step, ctx.now_ms)?;
        }
        Ok(())
    }
}

impl ValidateProcessor {
    /// A valid event: counted in, its lineage step, and claimed on
    /// `usage.identified` under its identity with the partition's next seq.
    fn pass(
        &self,
        validated: &ValidatedEvent,
        rec: &InputRecord<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        let now_ms = ctx.now_ms;
        crate::internal_events::EventTimeLagMeasured {
            stage: SPEC.name,
            lag_s: (now_ms - validated.time.timestamp_millis()) / 1_000,
        }
        .emit(&self.event_time_lag);
        // In here; first copy or duplicate is counted by dedupe (reconcile
        // adds the two stages' counters up).
        lineage::count(ctx, COUNTERS, &lineage::day_of(validated.time), [Count::In])?;
        #[derive(serde::Serialize)]
        struct Detail<'a> {
            subject: &'a str,
            time: chrono::DateTime<chrono::Utc>,
        }
        let step = lineage::StepOut {
            outcome: "validated",
            partition: rec.partition,
            offset: rec.offset,
            detail: &Detail {
                subject: &validated.subject,
                time: validated.time,
            },
        };
        lineage::record_step(ctx, LINEAGE, &validated.source, &validated.id, step, now_ms)?;
        let seq = next_seq(ctx)?;
        let fatal = |e: serde_json::Error| StageError::Fatal(format!("serializing a claim: {e}"));
        let event = serde_json::value::to_raw_value(validated).map_err(fatal)?;
        let claim = GateRecord {
            kind: GateKind::Claim,
            origin_partition: rec.partition,
            seq,
            first_copy: None,
            event: Some(event),
        };
        ctx.emit(Output {
            topic: self.output_topic.clone(),
            key: Some(identity_key(&validated.source, &validated.id)),
            value: Some(claim.to_json_bytes().map_err(fatal)?),
            headers: Vec::new(),
            partition: None,
        });
        Ok(())
    }
}

/// The partition's next seq, counted up in the `sequence` store (so a
/// rejected record, whose writes are dropped, never takes one).
fn next_seq(ctx: &mut Ctx<'_>) -> Result<u64, StageError> {
    let seq = ctx.stores.get_counter(SEQUENCE, NEXT_SEQ_KEY)?;
    let next = seq
        .checked_add(1)
        .ok_or_else(|| StageError::Fatal("sequence overflow".into()))?;
    ctx.stores.put_counter(SEQUENCE, NEXT_SEQ_KEY, next);
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::{Harness, Record};
    use chrono::{TimeZone, Utc};

    use crate::stages::fixtures::gate_config as config;

    fn event(source: &str, id: &str, tokens: &str, time: chrono::DateTime<Utc>) -> Vec<u8> {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"llm.tokens","subject":"cust-1","time":"{}","data":{{"tokens":{tokens},"model":"m"}}}}"#,
            time.to_rfc3339()
        )
        .into_bytes()
    }

    /// Default rules over empty stores, the clock at `now`.
    fn harness(now: chrono::DateTime<Utc>) -> Harness<ValidateProcessor> {
        let cfg = config();
        let p = ValidateProcessor::with_parts(&cfg, ValidateRules::default(), None).unwrap();
        Harness::new(cfg, p, now.timestamp_millis())
    }

    fn now() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    /// One record at the harness's next offset.
    fn run(
        h: &mut Harness<ValidateProcessor>,
        value: &[u8],
    ) -> (Result<(), StageError>, Vec<Output>) {
        assert_eq!(h.input_topic(), "x.usage.events");
        let r = h.process_record(Record {
            key: Some(b"cust-1"),
            value: Some(value),
            timestamp_ms: Some(1),
            ..Record::default()
        });
        match r {
            Ok(out) => (Ok(()), out),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    fn with_subject(event: Vec<u8>, subject: &str) -> Vec<u8> {
        String::from_utf8(event)
            .unwrap()
            .replace(
                "\"subject\":\"cust-1\"",
                &format!("\"subject\":\"{subject}\""),
            )
            .into_bytes()
    }

    /// The claim of an output: (key, origin partition, seq, event).
    fn claim(o: &Output) -> (String, i32, u64, crate::contracts::ValidatedEvent) {
        assert_eq!(o.topic, "x.usage.identified");
        let c = GateRecord::from_json_slice(o.value.as_deref().unwrap()).unwrap();
        assert_eq!(c.kind, GateKind::Claim);
        assert_eq!(c.first_copy, None);
        let event = ValidatedEvent::from_json_slice(c.event.unwrap().get().as_bytes()).unwrap();
        let key = String::from_utf8(o.key.clone().unwrap()).unwrap();
        (key, c.origin_partition, c.seq, event)
    }

    #[test]
    fn valid_events_are_claimed_by_identity_in_sequence_whatever_their_subject() {
        let now = now();
        let mut h = harness(now);
        // A negative value is rejected: nothing goes on, no seq is taken.
        let (r, out) = run(&mut h, &event("src", "e1", "-5", now));
        assert_eq!(
            r.unwrap_err().to_string().split(':').next().unwrap(),
            "value_negative"
        );
        assert!(out.is_empty());
        // The corrected resend is claimed under its identity, seq 0,
        let (r, out) = run(&mut h, &event("src", "e1", "5", now));
        r.unwrap();
        assert_eq!(out.len(), 1);
        let (key, partition, seq, v) = claim(&out[0]);
        assert_eq!(
            (key.as_str(), partition, seq),
            (r#"["src","e1"]"#, h.partition, 0)
        );
        assert_eq!((v.subject.as_str(), v.id.as_str()), ("cust-1", "e1"));
        // a copy sent for another customer gets the same key (so the same
        // partition of usage.identified, where dedupe drops it), seq 1,
        let (r, out) = run(
            &mut h,
            &with_subject(event("src", "e1", "7", now), "cust-2"),
        );
        r.unwrap();
        let (key, _, seq, v) = claim(&out[0]);
        assert_eq!(
            (key.as_str(), seq, v.subject.as_str()),
            (r#"["src","e1"]"#, 1, "cust-2")
        );
        // a reject in between takes no seq,
        assert!(run(&mut h, &event("src", "e9", "-1", now)).0.is_err());
        // and the same id from another source is another identity, seq 2,
        // also after a commit.
        h.commit().unwrap();
        let (r, out) = run(&mut h, &event("other", "e1", "7", now));
        r.unwrap();
        let (key, _, seq, _) = claim(&out[0]);
        assert_eq!((key.as_str(), seq), (r#"["other","e1"]"#, 2));
    }
}
