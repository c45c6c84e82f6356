//! The validate stage: the gate where bad and duplicate telemetry stops.
//!
//! For each record of `usage.events`: refuse it if it is larger than
//! `max_event_bytes` (`event_too_large`), decode it (CloudEvents structured JSON,
//! binary mode, or Confluent Avro via the registry, see [`decode`]), apply the
//! rules ([`rules`]: attributes, time window, source allow-list, HMAC
//! signature, meter values), and only then check the dedupe store: a rejected
//! event never claims its (`source`, `id`), so a corrected resend is accepted;
//! among valid copies the first wins. Rejects go to `meterline.dlq.validate`
//! with a stable reason code ([`reason`]); duplicates are counted and dropped;
//! the rest go to `usage.validated`, keyed by `subject` (the customer).
//!
//! The dedupe store keeps each accepted (`source`, `id`) with the event time
//! of its first copy, and drops entries older than `dedupe_horizon_days`
//! behind the partition's stream time (the greatest event time seen), so it
//! does not grow without bound. The config refuses a horizon shorter than the
//! window of accepted event times, so an expired entry can never let a
//! duplicate through.

pub mod decode;
mod dedupe;
pub mod reason;
pub mod rules;

use std::collections::BTreeMap;

use prometheus::IntCounter;

use crate::config::Config;
use crate::contracts::Origin;
use crate::lineage::{self, Count};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::store::StoreId;
use crate::topology::{self, StageSpec};

use decode::{AvroDecoder, DecodeError, RawRecord};
use rules::{MeterIndex, ValidateRules};

/// The stores' indexes in the stage's store list.
const DEDUPE: StoreId = 0;
const LINEAGE: StoreId = 1;
const COUNTERS: StoreId = 2;
/// Expired dedupe entries removed per partition per punctuation (bounds the
/// size of one transaction; the rest go in the next ones).
const PURGE_BATCH_MAX: usize = 5_000;
const MS_PER_DAY: i64 = 86_400_000;

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
    horizon_ms: i64,
    output_topic: String,
    /// Greatest event time accepted per partition (drives expiry).
    stream_time_ms: BTreeMap<i32, i64>,
    duplicates: IntCounter,
    /// Wall clock minus the event time of the last event validated.
    event_time_lag: prometheus::IntGauge,
}

impl ValidateProcessor {
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let v = &config.validate;
        let mut hmac_keys = BTreeMap::new();
        for (source, key) in &v.hmac_keys_hex {
            let k = hex::decode(key).map_err(|_| SetupError::HmacKey(source.clone()))?;
            hmac_keys.insert(source.clone(), k);
        }
        let rules = ValidateRules {
            max_event_age_days: v.max_event_age_days,
            max_clock_skew_s: v.max_clock_skew_s,
            allowed_sources: v.allowed_sources.clone(),
            hmac_keys,
            signature_header: v.signature_header.clone(),
            require_signature: v.require_signature,
            max_event_bytes: v.max_event_bytes,
        };
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
            horizon_ms: i64::from(config.validate.dedupe_horizon_days) * MS_PER_DAY,
            output_topic: config.topic(topology::names::VALIDATED),
            stream_time_ms: BTreeMap::new(),
            event_time_lag: crate::metrics::event_time_lag(SPEC.name),
            duplicates: crate::metrics::counter(
                "meterline_validate_duplicates_total",
                "Valid events dropped because their (source, id) was already accepted.",
            ),
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

        // Dedupe only after validation: a rejected copy never claims the id.
        let entry = dedupe::entry_key(&validated.source, &validated.id);
        let day = lineage::day_of(validated.time);
        let now_ms = ctx.now_ms;
        crate::internal_events::EventTimeLagMeasured {
            stage: SPEC.name,
            lag_s: (now_ms - validated.time.timestamp_millis()) / 1_000,
        }
        .emit(&self.event_time_lag);
        let step = |outcome: &str, detail: serde_json::Value| lineage::Step {
            outcome: outcome.to_string(),
            partition: rec.partition,
            offset: rec.offset,
            reason: None,
            detail,
        };
        if ctx.stores.get(DEDUPE, &entry)?.is_some() {
            crate::internal_events::DuplicateDropped {
                source: &validated.source,
                id: &validated.id,
                partition: rec.partition,
                offset: rec.offset,
            }
            .emit(&self.duplicates);
            lineage::count(ctx, COUNTERS, &day, [Count::In, Count::Released])?;
            lineage::record_step(
                ctx,
                LINEAGE,
                &validated.source,
                &validated.id,
                step("duplicate", serde_json::Value::Null),
                now_ms,
            )?;
            return Ok(());
        }
        lineage::count(ctx, COUNTERS, &day, [Count::In, Count::Passed])?;
        lineage::record_step(
            ctx,
            LINEAGE,
            &validated.source,
            &validated.id,
            step(
                "validated",
                serde_json::json!({"subject": validated.subject, "time": validated.time}),
            ),
            now_ms,
        )?;
        let time_ms = validated.time.timestamp_millis();
        ctx.stores.put(DEDUPE, entry, dedupe::encode_time(time_ms));
        ctx.stores.put(
            DEDUPE,
            dedupe::expiry_key(time_ms, &validated.source, &validated.id),
            Vec::new(),
        );
        let st = self.stream_time_ms.entry(rec.partition).or_insert(i64::MIN);
        *st = (*st).max(time_ms);

        let value = validated
            .to_json_bytes()
            .map_err(|e| StageError::Fatal(format!("serializing a validated event: {e}")))?;
        ctx.emit(Output {
            topic: self.output_topic.clone(),
            key: Some(validated.subject.into_bytes()),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
        });
        Ok(())
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

    fn punctuate(&mut self, ctx: &mut Ctx<'_>, _now_ms: i64) -> Result<(), StageError> {
        let Some(&st) = self.stream_time_ms.get(&ctx.partition) else {
            return Ok(());
        };
        let cutoff = st.saturating_sub(self.horizon_ms);
        let (from, to) = dedupe::expired_range(cutoff);
        for (k, _) in ctx.stores.scan(DEDUPE, &from, &to, PURGE_BATCH_MAX)? {
            let (_, source, id) = dedupe::parse_expiry_key(&k)
                .map_err(|e| StageError::Fatal(format!("dedupe store: {e}")))?;
            ctx.stores.delete(DEDUPE, k);
            ctx.stores.delete(DEDUPE, dedupe::entry_key(&source, &id));
        }
        Ok(())
    }

    fn on_rollback(&mut self) {
        // Stream time only moves expiry; a value from aborted records is
        // harmless (it will be reached again), so it is kept.
    }

    fn on_revoked(&mut self, partition: i32) {
        self.stream_time_ms.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::{Harness, Record};
    use chrono::{TimeZone, Utc};

    fn config() -> Config {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Config::from_parts(
            "[topology]\nnamespace = \"x.\"\n[validate]\ndedupe_horizon_days = 40\n",
            "test",
            &[],
            dir,
        )
        .unwrap()
    }

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

    #[test]
    fn first_valid_copy_wins_and_rejects_do_not_claim_the_id() {
        let now = now();
        let mut h = harness(now);
        // A negative value is rejected and does not claim (src, e1)...
        let (r, out) = run(&mut h, &event("src", "e1", "-5", now));
        assert_eq!(
            r.unwrap_err().to_string().split(':').next().unwrap(),
            "value_negative"
        );
        assert!(out.is_empty());
        // ...so the corrected resend is accepted,
        let (r, out) = run(&mut h, &event("src", "e1", "5", now));
        r.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "x.usage.validated");
        assert_eq!(out[0].key.as_deref(), Some(&b"cust-1"[..]));
        // and a later copy with another payload is a duplicate.
        let (r, out) = run(&mut h, &event("src", "e1", "7", now));
        r.unwrap();
        assert!(out.is_empty());
        // Same id from another source is another event.
        let (r, out) = run(&mut h, &event("other", "e1", "7", now));
        r.unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn entries_older_than_the_horizon_are_purged() {
        let now = now();
        let mut h = harness(now);
        let old = now - chrono::Duration::days(30);
        run(&mut h, &event("src", "old", "1", old)).0.unwrap();
        run(&mut h, &event("src", "new", "1", now)).0.unwrap();
        h.commit().unwrap();
        // Horizon 40 days: nothing is old enough yet.
        h.processor.horizon_ms = 40 * MS_PER_DAY;
        h.now_ms = 0;
        h.punctuate().unwrap();
        assert!(h
            .stores
            .get(DEDUPE, &dedupe::entry_key("src", "old"))
            .unwrap()
            .is_some());
        // Horizon 10 days: the 30-day-old entry goes, with its index key.
        h.processor.horizon_ms = 10 * MS_PER_DAY;
        h.punctuate().unwrap();
        assert!(h
            .stores
            .get(DEDUPE, &dedupe::entry_key("src", "old"))
            .unwrap()
            .is_none());
        assert!(h
            .stores
            .get(DEDUPE, &dedupe::entry_key("src", "new"))
            .unwrap()
            .is_some());
        let all = h.stores.scan(DEDUPE, &[], &[0xFF], 100).unwrap();
        assert_eq!(all.len(), 2, "one entry and one index key remain");
    }
}
