//! Lineage and reconciliation state the stages keep.
//!
//! Every stage has a `lineage` store (changelog-backed like every store, so
//! it moves with its partition and survives a lost volume). It answers "where
//! did this event go?" without scanning topics, the way Kafka Streams
//! answers interactive queries: each instance serves the stores of the
//! partitions it owns over HTTP (`/lineage/...`, see [`crate::http`]) and
//! `meterline lineage` asks every instance it is given.
//!
//! | stage | key | value |
//! |---|---|---|
//! | validate, dedupe, enrich, rate, aggregate | `E` source, id, input partition, input offset | [`Step`]: what the stage did with that copy of the event (offset -1: not from an input record, e.g. re-emitted when healed) |
//! | post | `W` [`WindowRef`] | [`WindowPostings`]: the postings made from the window |
//! | post | `P` idempotency key | [`PostingSources`]: the windows and events behind a posting |
//! | every stage | `X` first write (i64 ms), key | empty: expiry index |
//!
//! Entries expire `lineage.retention_days` (config) after their first
//! write ([`expire`], from each stage's punctuation, in bounded batches).
//!
//! validate, dedupe and enrich also keep a `counters` store: [`DayCounters`]
//! per UTC day of event time (key `C` day), which `meterline reconcile` reads
//! from its changelog topic: duplicates are dropped, so no topic records them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::runtime::{Ctx, StageError};
use crate::store::keys::{KeyBuilder, KeyReader};
use crate::store::StoreId;

/// Name of every stage's lineage store (its changelog is
/// `meterline.<stage>.lineage.changelog`).
pub const LINEAGE_STORE: &str = "lineage";
/// Name of the counters store of validate, dedupe and enrich.
pub const COUNTERS_STORE: &str = "counters";

const EVENT_PREFIX: u8 = b'E';
const WINDOW_PREFIX: u8 = b'W';
const POSTING_PREFIX: u8 = b'P';
const EXPIRY_PREFIX: u8 = b'X';
const COUNTER_PREFIX: u8 = b'C';
/// Steps of one event listed per partition by a query (a source re-sending
/// one id forever must not make one answer unbounded); the rest are counted.
pub const STEPS_PER_EVENT_MAX: usize = 64;
/// Expired entries removed per partition per punctuation.
pub const EXPIRE_BATCH_ENTRIES: usize = 2_000;
const MS_PER_DAY: i64 = 86_400_000;
/// The counters bucket of an event whose time could not be read.
pub const UNKNOWN_DAY: &str = "unknown";

/// What one stage did with one copy of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// validated | dead_lettered (validate), first_copy | duplicate (dedupe),
    /// enriched | parked | rated | windowed
    pub outcome: String,
    /// Input partition and offset of the copy.
    pub partition: i32,
    pub offset: i64,
    /// Reason code (dead_lettered, parked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Stage-specific facts (subscription and plan version, rated deltas,
    /// windows), as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Step {
    /// The windows an aggregate step put the event into.
    pub fn windows(&self) -> Vec<WindowRef> {
        self.detail
            .get("windows")
            .and_then(|w| serde_json::from_value(w.clone()).ok())
            .unwrap_or_default()
    }
}

/// A [`Step`] as a stage writes it on every event: the same fields (no
/// reason), the detail serialized straight from the stage's own values,
/// without building a JSON tree first. It reads back as a [`Step`].
#[derive(Debug, Serialize)]
pub struct StepOut<'a, D: Serialize> {
    pub outcome: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub detail: &'a D,
}

/// What [`record_step`] writes: a step and the input position it keys.
pub trait StepRecord: Serialize {
    /// The input partition and offset of the copy.
    fn position(&self) -> (i32, i64);
}

impl StepRecord for Step {
    fn position(&self) -> (i32, i64) {
        (self.partition, self.offset)
    }
}

impl<D: Serialize> StepRecord for StepOut<'_, D> {
    fn position(&self) -> (i32, i64) {
        (self.partition, self.offset)
    }
}

/// The steps of one event in one stage, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Steps {
    pub steps: Vec<Step>,
    /// Copies seen beyond [`STEPS_PER_EVENT_MAX`].
    #[serde(default)]
    pub more: u64,
}

/// A window as lineage names it: kind, scope (segment id, or subscription
/// id for a period close), window id, and the closed window it adjusts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowRef {
    pub kind: String,
    pub scope: String,
    pub window: String,
    pub adjusts: Option<String>,
}

impl WindowRef {
    /// The stage HTTP path answering what post made of this window.
    pub fn lineage_path(&self) -> String {
        use crate::http::percent_encode;
        format!(
            "/lineage/window?kind={}&scope={}&window={}&adjusts={}",
            percent_encode(&self.kind),
            percent_encode(&self.scope),
            percent_encode(&self.window),
            percent_encode(self.adjusts.as_deref().unwrap_or(""))
        )
    }

    fn key(&self) -> Vec<u8> {
        KeyBuilder::new(WINDOW_PREFIX)
            .str(&self.kind)
            .str(&self.scope)
            .str(&self.window)
            .str(self.adjusts.as_deref().unwrap_or(""))
            .build()
    }
}

/// One posting, as lineage lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostingRef {
    pub idempotency_key: String,
    pub posting_type: String,
    pub kind: String,
    /// The journal entry's debit total or the invoice line's amount (as text).
    pub amount: String,
    pub accounting_date: String,
}

/// The postings made from one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowPostings {
    pub postings: Vec<PostingRef>,
    pub event_count: u64,
    /// The invoice whose lines clear the window (`<subscription>@<period>`):
    /// its day accruals, or its invoice line, rounding and reclass, which
    /// the invoice stage posts when that invoice is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
}

/// The windows behind one posting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PostingSources {
    pub windows: Vec<WindowRef>,
    pub event_count: u64,
    pub lineage_digest: String,
}

/// Per-day counts a stage keeps for `meterline reconcile`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCounters {
    /// Records read (validate: every record; dedupe: not counted, validate
    /// counted them; enrich: validated events).
    #[serde(default)]
    pub records_in: u64,
    /// dedupe: first copies sent to usage.validated. enrich: sent to
    /// usage.enriched on arrival.
    #[serde(default)]
    pub passed: u64,
    /// validate: dead-lettered. enrich: parked on usage.exceptions.
    #[serde(default)]
    pub held: u64,
    /// dedupe: duplicates dropped. enrich: parked events re-emitted to
    /// usage.enriched once healed.
    #[serde(default)]
    pub released: u64,
}

/// Which counter an outcome bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A record read.
    In,
    Passed,
    Held,
    Released,
}

/// The prefix of every step of one event: (source, id) are length-prefixed,
/// so no other event's keys start with it.
pub fn event_key(source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(EVENT_PREFIX).str(source).str(id).build()
}

/// The key of one step: the event's prefix, then the input position.
pub fn step_key(source: &str, id: &str, partition: i32, offset: i64) -> Vec<u8> {
    KeyBuilder::new(EVENT_PREFIX)
        .str(source)
        .str(id)
        .i64(i64::from(partition))
        .i64(offset)
        .build()
}

/// The exclusive upper bound of keys starting with `prefix` (every suffix
/// here is shorter than this run of 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.extend_from_slice(&[0xFF; 17]);
    end
}

pub fn window_key(w: &WindowRef) -> Vec<u8> {
    w.key()
}

pub fn posting_key(idempotency_key: &str) -> Vec<u8> {
    KeyBuilder::new(POSTING_PREFIX).str(idempotency_key).build()
}

pub fn counter_key(day: &str) -> Vec<u8> {
    KeyBuilder::new(COUNTER_PREFIX).str(day).build()
}

/// The day of a counters key, if it is one.
pub fn counter_day(key: &[u8]) -> Option<String> {
    let mut r = KeyReader::new(key, COUNTER_PREFIX).ok()?;
    let day = r.str().ok()?.to_string();
    r.finish().ok()?;
    Some(day)
}

/// The UTC day of an event time, the counters bucket.
pub fn day_of(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d").to_string()
}

fn expiry_key(first_ms: i64, key: &[u8]) -> Vec<u8> {
    KeyBuilder::new(EXPIRY_PREFIX)
        .i64(first_ms)
        .bytes(key)
        .build()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::Fatal(format!("lineage store: {what}: {e}"))
}

/// Records `step` of the event under its own key (no read: this runs for
/// every event in four stages), with an expiry index entry stamped `now_ms`.
pub fn record_step(
    ctx: &mut Ctx<'_>,
    store: StoreId,
    source: &str,
    id: &str,
    step: impl StepRecord,
    now_ms: i64,
) -> Result<(), StageError> {
    let (partition, offset) = step.position();
    let key = step_key(source, id, partition, offset);
    let b = serde_json::to_vec(&step).map_err(|e| corrupt("encoding", e))?;
    ctx.stores.put(store, expiry_key(now_ms, &key), Vec::new());
    ctx.stores.put(store, key, b);
    Ok(())
}

/// Gathers the steps found under an event's prefix (in key order: by input
/// position), at most [`STEPS_PER_EVENT_MAX`] listed.
pub fn gather_steps(values: impl IntoIterator<Item = Vec<u8>>) -> Steps {
    let mut steps = Steps::default();
    for v in values {
        match serde_json::from_slice::<Step>(&v) {
            Ok(s) if steps.steps.len() < STEPS_PER_EVENT_MAX => steps.steps.push(s),
            _ => steps.more += 1,
        }
    }
    steps
}

/// Writes a JSON value under `key` (creating its expiry entry when new).
pub fn put_json<T: Serialize>(
    ctx: &mut Ctx<'_>,
    store: StoreId,
    key: Vec<u8>,
    value: &T,
    now_ms: i64,
) -> Result<(), StageError> {
    if ctx.stores.get(store, &key)?.is_none() {
        ctx.stores.put(store, expiry_key(now_ms, &key), Vec::new());
    }
    let b = serde_json::to_vec(value).map_err(|e| corrupt("encoding", e))?;
    ctx.stores.put(store, key, b);
    Ok(())
}

/// Reads a JSON value the transaction sees.
pub fn get_json<T: for<'de> Deserialize<'de>>(
    ctx: &Ctx<'_>,
    store: StoreId,
    key: &[u8],
) -> Result<Option<T>, StageError> {
    match ctx.stores.get(store, key)? {
        Some(b) => Ok(Some(
            serde_json::from_slice(&b).map_err(|e| corrupt("entry", e))?,
        )),
        None => Ok(None),
    }
}

/// Adds one to each of `what` in a day's counters: one read-modify-write
/// of the day's entry per record, however many counters it moves.
pub fn count(
    ctx: &mut Ctx<'_>,
    store: StoreId,
    day: &str,
    what: impl IntoIterator<Item = Count>,
) -> Result<(), StageError> {
    let key = counter_key(day);
    let mut c: DayCounters = get_json(ctx, store, &key)?.unwrap_or_default();
    for w in what {
        match w {
            Count::In => c.records_in += 1,
            Count::Passed => c.passed += 1,
            Count::Held => c.held += 1,
            Count::Released => c.released += 1,
        }
    }
    let b = serde_json::to_vec(&c).map_err(|e| corrupt("encoding", e))?;
    ctx.stores.put(store, key, b);
    Ok(())
}

/// Deletes entries first written more than `retention_days` before `now_ms`,
/// at most [`EXPIRE_BATCH_ENTRIES`].
pub fn expire(
    ctx: &mut Ctx<'_>,
    store: StoreId,
    now_ms: i64,
    retention_days: u32,
) -> Result<(), StageError> {
    let cutoff = now_ms.saturating_sub(i64::from(retention_days).saturating_mul(MS_PER_DAY));
    let to = KeyBuilder::new(EXPIRY_PREFIX).i64(cutoff).build();
    for (k, _) in ctx
        .stores
        .scan(store, &[EXPIRY_PREFIX], &to, EXPIRE_BATCH_ENTRIES)?
    {
        let mut r = KeyReader::new(&k, EXPIRY_PREFIX).map_err(|e| corrupt("expiry key", e))?;
        r.i64().map_err(|e| corrupt("expiry key", e))?;
        let entry = r.bytes().map_err(|e| corrupt("expiry key", e))?.to_vec();
        ctx.stores.delete(store, entry);
        ctx.stores.delete(store, k);
    }
    Ok(())
}

/// Best-effort (source, id, time) of a record a stage could not decode, for
/// the lineage of dead letters: a structured JSON envelope's attributes, or
/// binary mode's `ce_source`/`ce_id`/`ce_time` headers.
pub fn identify_raw(
    value: Option<&[u8]>,
    headers: &[(String, Option<Vec<u8>>)],
) -> (Option<String>, Option<String>, Option<DateTime<Utc>>) {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    let time = |s: Option<String>| {
        s.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    if let Some(src) = header("ce_source") {
        return (Some(src), header("ce_id"), time(header("ce_time")));
    }
    let Some(v) = value.and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok()) else {
        return (None, None, None);
    };
    let attr = |name: &str| v.get(name).and_then(|x| x.as_str()).map(str::to_owned);
    (attr("source"), attr("id"), time(attr("time")))
}

/// What `/lineage/event` answers: per stage, the steps every instance's
/// partitions know.
pub type EventLineage = BTreeMap<String, Vec<Step>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::{Bare, Harness};
    use crate::store::PartitionStores;
    use crate::topology::StageSpec;

    static SPEC: StageSpec = StageSpec {
        name: "lineage-test",
        input: "usage.events",
        outputs: &[],
        tables: &[],
        stores: &[LINEAGE_STORE],
        summary: "one lineage store, for the lineage functions' tests",
    };

    fn harness() -> Harness<Bare> {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cfg = crate::config::Config::from_parts("", "test", &[], dir).unwrap();
        Harness::new(cfg, Bare(&SPEC), 0)
    }

    #[test]
    fn keys_round_trip_and_prefixes_do_not_collide() {
        assert_eq!(
            counter_day(&counter_key("2026-10-05")).as_deref(),
            Some("2026-10-05")
        );
        assert_eq!(counter_day(&event_key("2026-10-05", "x")), None);
        let keys = [
            event_key("s", "i"),
            window_key(&WindowRef {
                kind: "day".into(),
                scope: "s".into(),
                window: "i".into(),
                adjusts: None,
            }),
            posting_key("si"),
            counter_key("si"),
            expiry_key(0, b"si"),
        ];
        let firsts: std::collections::BTreeSet<u8> = keys.iter().map(|k| k[0]).collect();
        assert_eq!(firsts.len(), keys.len());
        // (source, id) is unambiguous whatever the strings hold.
        assert_ne!(event_key("a", "bc"), event_key("ab", "c"));
    }

    #[test]
    fn steps_append_cap_and_expire() {
        let mut h = harness();
        let step = |o: &str| Step {
            outcome: o.into(),
            partition: 0,
            offset: 1,
            reason: None,
            detail: serde_json::Value::Null,
        };
        h.with_ctx(|_, ctx| {
            for i in 0..(STEPS_PER_EVENT_MAX + 3) {
                let o = if i == 0 { "validated" } else { "duplicate" };
                let mut st = step(o);
                st.offset = i as i64;
                record_step(ctx, 0, "src", "id", st, 1_000).unwrap();
            }
            record_step(ctx, 0, "src", "other", step("validated"), 5 * MS_PER_DAY).unwrap();
            count(ctx, 0, "2026-10-05", [Count::In, Count::Passed]).unwrap();
        });
        h.commit().unwrap();
        let of = |s: &PartitionStores, id: &str| {
            let p = event_key("src", id);
            gather_steps(
                s.scan(0, &p, &prefix_end(&p), 1_000)
                    .unwrap()
                    .into_iter()
                    .map(|(_, v)| v),
            )
        };
        let steps = of(&h.stores, "id");
        assert_eq!(steps.steps.len(), STEPS_PER_EVENT_MAX);
        assert_eq!(steps.steps[0].outcome, "validated");
        assert_eq!(steps.steps[1].outcome, "duplicate");
        assert_eq!(steps.more, 3);
        // "i" is a prefix of "id" as text, not as a key.
        assert!(of(&h.stores, "i").steps.is_empty());
        // 2 days after the first entries, with 1 day of retention: they go.
        h.with_ctx(|_, ctx| expire(ctx, 0, 2 * MS_PER_DAY, 1).unwrap());
        h.commit().unwrap();
        assert!(of(&h.stores, "id").steps.is_empty());
        assert_eq!(of(&h.stores, "other").steps.len(), 1);
        let c: DayCounters = serde_json::from_slice(
            &h.stores
                .get(0, &counter_key("2026-10-05"))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!((c.records_in, c.passed, c.held, c.released), (1, 1, 0, 0));
    }

    #[test]
    fn raw_records_are_identified_from_json_or_headers() {
        let (s, i, t) = identify_raw(
            Some(br#"{"source":"a","id":"b","time":"2026-10-05T10:00:00Z","data":5}"#),
            &[],
        );
        assert_eq!((s.as_deref(), i.as_deref()), (Some("a"), Some("b")));
        assert_eq!(day_of(t.unwrap()), "2026-10-05");
        let h = vec![
            ("ce_source".to_string(), Some(b"x".to_vec())),
            ("ce_id".to_string(), Some(b"y".to_vec())),
        ];
        let (s, i, t) = identify_raw(Some(b"not json"), &h);
        assert_eq!(
            (s.as_deref(), i.as_deref(), t),
            (Some("x"), Some("y"), None)
        );
        assert_eq!(identify_raw(Some(b"{"), &[]), (None, None, None));
    }
}

/// Asking the instances that keep lineage, over HTTP (the `meterline
/// lineage` verb and the API's `/v1/lineage/event`).
pub mod remote {
    use std::collections::BTreeMap;

    use crate::config::Config;
    use crate::http::http_get_as;

    /// Stage -> what its partitions answered, merged over instances.
    pub type Merged = BTreeMap<String, Vec<serde_json::Value>>;

    /// `lineage.endpoints`, else this config's own `http.listen_addr`.
    pub fn endpoints(config: &Config) -> Vec<String> {
        if !config.lineage.endpoints.is_empty() {
            return config.lineage.endpoints.clone();
        }
        if config.http.listen_addr.is_empty() {
            return Vec::new();
        }
        vec![format!("http://{}", config.http.listen_addr)]
    }

    /// Asks every endpoint for `path` and merges the answers (each instance
    /// answers only for the partitions it owns). Returns the merged answer
    /// and the failures of the endpoints that did not answer; Err (listing
    /// them) when none did.
    pub fn ask_all(
        endpoints: &[String],
        path: &str,
        bearer: Option<&str>,
    ) -> Result<(Merged, Vec<String>), String> {
        if endpoints.is_empty() {
            return Err("no instance to ask: set lineage.endpoints (or http.listen_addr)".into());
        }
        let mut merged = Merged::new();
        let mut answered = 0;
        let mut errors = Vec::new();
        for e in endpoints {
            match http_get_as(e, path, bearer) {
                Ok((200, body)) => match serde_json::from_str::<Merged>(&body) {
                    Ok(a) => {
                        answered += 1;
                        for (stage, found) in a {
                            merged.entry(stage).or_default().extend(found);
                        }
                    }
                    Err(err) => errors.push(format!("{e}{path}: not a lineage answer ({err})")),
                },
                Ok((status, body)) => errors.push(format!("{e}: HTTP {status}: {}", body.trim())),
                Err(err) => errors.push(err.to_string()),
            }
        }
        if answered == 0 {
            return Err(format!(
                "no instance answered (asked {}): {}",
                endpoints.join(", "),
                errors.join("; ")
            ));
        }
        Ok((merged, errors))
    }
}
