//! What the API answers from, besides the config: compacted topics read from
//! the beginning (read_committed) and then followed, on one thread per
//! view, into memory: the `ref.*` topics ([`RefView`]), aggregate's
//! `windows` changelog, the open windows ([`WindowView`]), and the invoice
//! documents of `finance.invoices` ([`InvoiceView`]). A view is ready
//! once it has read up to where each partition ended when it started; until
//! then the queries that need it answer 503.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::contracts::{ClosedWindow, Command, Invoice, LedgerAck, WindowKind};
use crate::kafka::{self, ReaderContext};
use crate::refdata::{RefKind, RefTables};
use crate::topology::names;

/// How long one poll of a followed topic waits.
const FOLLOW_POLL_TIMEOUT_MS: u64 = 200;
/// How often a view that is not ready yet compares its position with the
/// end offsets it must reach.
const READY_CHECK_INTERVAL_MS: u64 = 200;
/// Key prefix of an open window in aggregate's `windows` store.
const OPEN_WINDOW_KEY_PREFIX: u8 = b'W';

/// What a view does with each record it follows.
pub trait Apply: Send + Sync + 'static {
    type State: Default + Send + Sync;
    /// An upsert (`Some`) or a tombstone (`None`) of `key` on `topic`.
    fn apply(
        &self,
        state: &mut Self::State,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    );

    /// The whole record, for views that need its headers or timestamp;
    /// by default [`Apply::apply`] of its key and value.
    fn apply_message(&self, state: &mut Self::State, m: &BorrowedMessage<'_>) {
        self.apply(
            state,
            m.topic(),
            m.partition(),
            m.key().unwrap_or_default(),
            m.payload(),
        );
    }
}

/// A followed state and whether it caught up.
pub struct View<A: Apply> {
    state: RwLock<A::State>,
    ready: AtomicBool,
}

impl<A: Apply> View<A> {
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, A::State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Assigns every partition of `topics` from the beginning and starts
/// following them on a thread; returns at once (the view is not ready until
/// the thread has read to where the partitions ended).
pub fn start<A: Apply>(
    config: &Config,
    topics: Vec<String>,
    apply: A,
) -> Result<Arc<View<A>>, kafka::ClientError> {
    start_at(config, topics, None, apply)
}

/// [`start`], from the first record appended at or after `since_ms` (ms
/// since the epoch) instead of the beginning, when given.
pub fn start_at<A: Apply>(
    config: &Config,
    topics: Vec<String>,
    since_ms: Option<i64>,
    apply: A,
) -> Result<Arc<View<A>>, kafka::ClientError> {
    let consumer = kafka::reader(config)?;
    let md = kafka::check_topics(&consumer, config, &topics)?;
    let mut tpl = TopicPartitionList::new();
    let mut partitions = Vec::new();
    let from = since_ms.map_or(Offset::Beginning, Offset::Offset);
    let cfg_err = |e: rdkafka::error::KafkaError| kafka::ClientError::Config(e.to_string());
    for topic in &topics {
        for p in 0..kafka::partition_count(&md, topic, config)? {
            tpl.add_partition_offset(topic, p, from).map_err(cfg_err)?;
            partitions.push((topic.clone(), p));
        }
    }
    let view = Arc::new(View {
        state: RwLock::new(A::State::default()),
        ready: AtomicBool::new(false),
    });
    let v = view.clone();
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    std::thread::Builder::new()
        .name("api-follow".into())
        .spawn(move || {
            // Asked until answered (no deadline): until then the view is
            // simply not ready, which /readyz says.
            let positioned = |tpl: TopicPartitionList| {
                let tpl = match since_ms {
                    // Timestamps in, offsets out (End where nothing is that recent).
                    Some(_) => kafka::retry_until("offsets for the start time", None, || {
                        consumer.offsets_for_times(tpl.clone(), timeout)
                    })?,
                    None => tpl,
                };
                consumer.assign(&tpl)?;
                ends(&consumer, &tpl, &partitions, timeout)
            };
            match positioned(tpl) {
                Ok(ends) => follow(&consumer, &ends, &apply, &v),
                Err(e) => tracing::error!(error = %e, "positioning a follower failed: this view never gets ready"),
            }
        })
        .map_err(|e| kafka::ClientError::Config(format!("starting a follower thread: {e}")))?;
    Ok(view)
}

/// Where each partition ends now; 0 (nothing to wait for) when the
/// follower starts at or past it (a start time later than every record).
fn ends(
    consumer: &BaseConsumer<ReaderContext>,
    starts: &TopicPartitionList,
    partitions: &[(String, i32)],
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), i64>, rdkafka::error::KafkaError> {
    let mut ends = BTreeMap::new();
    for (topic, p) in partitions {
        let (_, high) = kafka::retry_until("end offset", None, || {
            consumer.fetch_watermarks(topic, *p, timeout)
        })?;
        let start = starts.find_partition(topic, *p).map(|e| e.offset());
        let at_end = match start {
            Some(Offset::End) => true,
            Some(Offset::Offset(o)) => o >= high,
            _ => false,
        };
        ends.insert((topic.clone(), *p), if at_end { 0 } else { high });
    }
    Ok(ends)
}

fn follow<A: Apply>(
    consumer: &BaseConsumer<ReaderContext>,
    ends: &BTreeMap<(String, i32), i64>,
    apply: &A,
    view: &View<A>,
) {
    // Checked on a clock, not only when a poll comes back empty: a topic
    // written without pause would otherwise keep the view unready.
    let mut last_check: Option<std::time::Instant> = None;
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(FOLLOW_POLL_TIMEOUT_MS)) {
            let mut state = view.state.write().unwrap_or_else(|p| p.into_inner());
            apply.apply_message(&mut state, &m);
        }
        let due = last_check
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(READY_CHECK_INTERVAL_MS));
        if !view.ready() && due {
            last_check = Some(std::time::Instant::now());
            if caught_up(consumer, ends) {
                view.ready.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Whether every partition's position reached where it ended at start.
fn caught_up(consumer: &BaseConsumer<ReaderContext>, ends: &BTreeMap<(String, i32), i64>) -> bool {
    let Ok(positions) = consumer.position() else {
        return false;
    };
    ends.iter().all(|((topic, p), high)| {
        *high == 0
            || positions
                .find_partition(topic, *p)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *high))
    })
}

/// The reference tables, as enrich keeps them.
pub struct Refs {
    kinds: BTreeMap<String, RefKind>,
}

pub type RefView = View<Refs>;

impl Apply for Refs {
    type State = RefTables;
    fn apply(&self, tables: &mut RefTables, topic: &str, _: i32, key: &[u8], value: Option<&[u8]>) {
        let Some(kind) = self.kinds.get(topic).copied() else {
            return;
        };
        if let Err(e) = tables.apply(kind, &String::from_utf8_lossy(key), value) {
            // As enrich does: the previous value stays in force.
            tracing::warn!(topic, code = e.code(), error = %e, "reference record skipped");
        }
    }
}

pub fn start_refs(config: &Config) -> Result<Arc<RefView>, kafka::ClientError> {
    let kinds: BTreeMap<String, RefKind> = RefKind::ALL
        .into_iter()
        .map(|k| (config.topic(k.topic()), k))
        .collect();
    start(config, kinds.keys().cloned().collect(), Refs { kinds })
}

/// Aggregate's open windows, by subscription.
pub struct OpenWindows;

/// Subscription id -> (partition, store key) -> open window.
pub type WindowsBySubscription = BTreeMap<String, BTreeMap<(i32, Vec<u8>), ClosedWindow>>;

#[derive(Default)]
pub struct WindowState {
    pub by_subscription: WindowsBySubscription,
    /// (partition, store key) -> subscription, to apply tombstones.
    owner: BTreeMap<(i32, Vec<u8>), String>,
}

pub type WindowView = View<OpenWindows>;

impl Apply for OpenWindows {
    type State = WindowState;
    fn apply(
        &self,
        s: &mut WindowState,
        _: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) {
        if key.first() != Some(&OPEN_WINDOW_KEY_PREFIX) {
            return;
        }
        let k = (partition, key.to_vec());
        if let Some(sub) = s.owner.remove(&k) {
            if let Some(m) = s.by_subscription.get_mut(&sub) {
                m.remove(&k);
                if m.is_empty() {
                    s.by_subscription.remove(&sub);
                }
            }
        }
        let Some(w) = value.and_then(|v| ClosedWindow::from_json_slice(v).ok()) else {
            return;
        };
        s.owner.insert(k.clone(), w.subscription_id.clone());
        s.by_subscription
            .entry(w.subscription_id.clone())
            .or_default()
            .insert(k, w);
    }
}

pub fn start_windows(config: &Config) -> Result<Arc<WindowView>, kafka::ClientError> {
    let topic = config.topic(&names::changelog("aggregate", "windows"));
    start(config, vec![topic], OpenWindows)
}

/// One local day of one segment, as OpenMeter's meter query shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DayKey {
    pub meter: String,
    pub subject: String,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    pub group: BTreeMap<String, String>,
    /// The segment (its id), so two plan versions' segments stay apart.
    pub segment_id: String,
}

/// Closed windows of `usage.windows` appended in the last
/// `api.meter_query_days`: day windows as quantity per [`DayKey`] (late
/// adjustments added to the day they adjust), and per subscription the
/// closed billing periods (period close, lines, adjustments).
pub struct ClosedWindows {
    keep_days: u32,
}

/// One closed billing period of a subscription, as aggregate handed it to
/// post: the period close, one line per segment, and the adjustments of
/// earlier periods invoiced with it.
#[derive(Debug, Clone, Default)]
pub struct ClosedPeriod {
    pub close: Option<ClosedWindow>,
    pub lines: Vec<ClosedWindow>,
    pub adjustments: Vec<ClosedWindow>,
}

/// Days older than the horizon are dropped every this many windows counted.
const PRUNE_EVERY_INSERTS: u64 = 10_000;

#[derive(Default)]
pub struct ClosedState {
    pub days: BTreeMap<DayKey, rust_decimal::Decimal>,
    /// Subscription -> billing period id -> what closed.
    pub periods: BTreeMap<String, BTreeMap<String, ClosedPeriod>>,
    /// (segment, window id, adjusted id) already counted: a window is
    /// emitted once, but the follower may read a record twice after a
    /// reconnect.
    seen: std::collections::BTreeSet<(String, String, Option<String>)>,
    inserted: u64,
}

pub type ClosedView = View<ClosedWindows>;

/// The day a day window (or its adjustment) counts for.
pub fn day_key(w: &ClosedWindow) -> Option<DayKey> {
    let seg = w.segment.as_ref()?;
    if w.kind != WindowKind::Day {
        return None;
    }
    let day = w.adjusts.as_ref().unwrap_or(&w.window);
    Some(DayKey {
        meter: seg.meter.clone(),
        subject: w.customer.id.clone(),
        start: day.start,
        end: day.end,
        group: seg.group.clone(),
        segment_id: seg.segment_id.clone(),
    })
}

/// Identity of a window emission: its scope (segment, or the subscription
/// of a period close), kind, window and adjusted window.
pub fn window_identity(w: &ClosedWindow) -> Option<(String, String, Option<String>)> {
    let scope = match &w.segment {
        Some(seg) => seg.segment_id.clone(),
        None => format!("{}:{}", w.kind.as_str(), w.subscription_id),
    };
    Some((
        format!("{scope}:{}", w.kind.as_str()),
        w.window.id.clone(),
        w.adjusts.as_ref().map(|a| a.id.clone()),
    ))
}

impl Apply for ClosedWindows {
    type State = ClosedState;
    fn apply(&self, s: &mut ClosedState, _: &str, _: i32, _: &[u8], value: Option<&[u8]>) {
        let Some(w) = value.and_then(|v| ClosedWindow::from_json_slice(v).ok()) else {
            return;
        };
        let Some(id) = window_identity(&w) else {
            return;
        };
        if !s.seen.insert(id) {
            return;
        }
        if let Some(key) = day_key(&w) {
            *s.days.entry(key).or_default() += w.quantity;
        } else {
            s.add_period_window(w);
        }
        s.inserted += 1;
        if s.inserted.is_multiple_of(PRUNE_EVERY_INSERTS) {
            s.prune(self.keep_days);
        }
    }
}

impl ClosedState {
    fn add_period_window(&mut self, w: ClosedWindow) {
        let periods = self.periods.entry(w.subscription_id.clone()).or_default();
        // An adjustment of a closed period is invoiced with its clearing one.
        let period_id = match w.adjusts {
            None => w.window.id.clone(),
            Some(_) => w.clearing.period.id.clone(),
        };
        let p = periods.entry(period_id).or_default();
        match (w.kind, w.adjusts.is_some()) {
            (WindowKind::PeriodClose, false) => p.close = Some(w),
            (WindowKind::BillingPeriod, false) => p.lines.push(w),
            _ => p.adjustments.push(w),
        }
    }

    /// Whether this window emission is counted here already.
    pub fn counted(&self, id: &(String, String, Option<String>)) -> bool {
        self.seen.contains(id)
    }

    /// Forgets days that ended more than `keep_days` ago.
    fn prune(&mut self, keep_days: u32) {
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(keep_days));
        self.days.retain(|k, _| k.end >= cutoff);
        for periods in self.periods.values_mut() {
            periods.retain(|_, p| {
                let end = p.close.as_ref().or(p.lines.first()).map(|w| w.window.end);
                end.is_none_or(|e| e >= cutoff)
            });
        }
        self.periods.retain(|_, p| !p.is_empty());
        let cutoff_day = cutoff.format("%Y-%m-%d").to_string();
        // Window ids are local dates: a day's id sorts as its date.
        self.seen
            .retain(|(_, id, _)| id.as_str() >= cutoff_day.as_str());
    }
}

pub fn start_closed(config: &Config) -> Result<Arc<ClosedView>, kafka::ClientError> {
    let topic = config.topic(names::WINDOWS);
    let since = chrono::Utc::now() - chrono::Duration::days(i64::from(config.api.meter_query_days));
    let keep_days = config.api.meter_query_days;
    start_at(
        config,
        vec![topic],
        Some(since.timestamp_millis()),
        ClosedWindows { keep_days },
    )
}

/// `finance.invoices` (compacted, read from the beginning): the latest
/// version of every invoice, by subscription.
pub struct Invoices;

/// Subscription id -> invoice id -> its latest version.
#[derive(Default)]
pub struct InvoiceState {
    pub by_subscription: BTreeMap<String, BTreeMap<String, Invoice>>,
    /// Invoice id -> subscription, for lookups by id (and paging in id order).
    pub subscription_of: BTreeMap<String, String>,
    /// Posting idempotency key -> the invoice listing it.
    pub invoice_of_posting: BTreeMap<String, String>,
}

impl InvoiceState {
    /// The latest version of invoice `id`.
    pub fn get(&self, id: &str) -> Option<&Invoice> {
        let sub = self.subscription_of.get(id)?;
        self.by_subscription.get(sub)?.get(id)
    }
}

pub type InvoiceView = View<Invoices>;

impl Apply for Invoices {
    type State = InvoiceState;
    fn apply(&self, s: &mut InvoiceState, _: &str, _: i32, _: &[u8], value: Option<&[u8]>) {
        // Compaction keeps the latest version; a tombstone is never written.
        let Some(inv) = value.and_then(|v| Invoice::from_json_slice(v).ok()) else {
            return;
        };
        let by_id = s
            .by_subscription
            .entry(inv.subscription_id.clone())
            .or_default();
        if by_id
            .get(&inv.invoice_id)
            .is_none_or(|seen| seen.version < inv.version)
        {
            s.subscription_of
                .insert(inv.invoice_id.clone(), inv.subscription_id.clone());
            for key in &inv.postings {
                s.invoice_of_posting
                    .insert(key.clone(), inv.invoice_id.clone());
            }
            by_id.insert(inv.invoice_id.clone(), inv);
        }
    }
}

pub fn start_invoices(config: &Config) -> Result<Arc<InvoiceView>, kafka::ClientError> {
    start(config, vec![config.topic(names::INVOICES)], Invoices)
}

/// Most command refusals kept in memory (the oldest are forgotten first).
pub const MAX_REFUSALS_KEPT: usize = 100_000;

/// The invoice stage's dead letters (`meterline.dlq.invoice`): why a
/// command was refused, for `GET /v1/commands/{id}`.
pub struct Refusals;

/// A refused command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: String,
    pub message: String,
    /// When the broker appended the dead letter (ms since the epoch).
    pub at_ms: i64,
}

/// Command id -> its latest refusal, at most [`MAX_REFUSALS_KEPT`].
#[derive(Default)]
pub struct RefusalState {
    pub by_command: BTreeMap<String, Refusal>,
    order: std::collections::VecDeque<String>,
}

pub type RefusalView = View<Refusals>;

impl RefusalState {
    pub fn insert(&mut self, command_id: String, refusal: Refusal) {
        if self
            .by_command
            .insert(command_id.clone(), refusal)
            .is_none()
        {
            self.order.push_back(command_id);
        }
        while self.order.len() > MAX_REFUSALS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_command.remove(&old);
            }
        }
    }
}

impl Apply for Refusals {
    type State = RefusalState;
    fn apply(&self, _: &mut RefusalState, _: &str, _: i32, _: &[u8], _: Option<&[u8]>) {}

    fn apply_message(&self, s: &mut RefusalState, m: &BorrowedMessage<'_>) {
        use crate::runtime::dlq::headers;
        let Some(cmd) = m.payload().and_then(|v| Command::from_json_slice(v).ok()) else {
            return;
        };
        s.insert(
            cmd.id,
            Refusal {
                code: kafka::header_text(m, headers::REASON),
                message: kafka::header_text(m, headers::MESSAGE),
                at_ms: m.timestamp().to_millis().unwrap_or_default(),
            },
        );
    }
}

pub fn start_refusals(config: &Config) -> Result<Arc<RefusalView>, kafka::ClientError> {
    start(config, vec![config.topic(&names::dlq("invoice"))], Refusals)
}

/// `finance.postings.acks` (compacted): the ledger's answer per posting.
pub struct Acks;

/// Posting idempotency key -> its latest acknowledgement.
pub type AckState = BTreeMap<String, LedgerAck>;
pub type AckView = View<Acks>;

impl Apply for Acks {
    type State = AckState;
    fn apply(&self, s: &mut AckState, _: &str, _: i32, key: &[u8], value: Option<&[u8]>) {
        match value.and_then(|v| LedgerAck::from_json_slice(v).ok()) {
            Some(ack) => {
                s.insert(ack.idempotency_key.clone(), ack);
            }
            None if value.is_none() => {
                s.remove(String::from_utf8_lossy(key).as_ref());
            }
            None => {}
        }
    }
}

pub fn start_acks(config: &Config) -> Result<Arc<AckView>, kafka::ClientError> {
    start(config, vec![config.topic(names::POSTING_ACKS)], Acks)
}
