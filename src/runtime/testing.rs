//! Driving a [`Processor`] the way the runtime does, without Kafka: for
//! stage unit tests, benchmarks and fixtures that chain stages in memory.
//!
//! A [`Harness`] owns one partition's stores over the in-memory backend and
//! a pinned clock. [`process`](Harness::process) runs one record as the
//! runtime does (a savepoint per record, a reject leaves nothing behind and
//! is noted by [`Processor::on_rejected`]); [`commit`](Harness::commit)
//! flushes and makes the transaction's writes durable;
//! [`abort`](Harness::abort) and [`revoke`](Harness::revoke) drop them as an
//! aborted transaction or a lost partition would. Nothing here touches the
//! network or the wall clock.

use super::{
    process_atomically, punctuate_partition, Ctx, InputRecord, Output, Processor, StageError,
};
use crate::config::Config;
use crate::store::{MemBackend, PartitionStores};
use crate::topology::StageSpec;

/// One record for [`Harness::process_record`]; the rest of the
/// [`InputRecord`] (topic, partition, offset) comes from the harness.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(String, Option<Vec<u8>>)],
    pub timestamp_ms: Option<i64>,
}

/// One processor, one partition, in memory.
pub struct Harness<P: Processor> {
    pub processor: P,
    pub stores: PartitionStores,
    pub config: Config,
    pub partition: i32,
    /// The clock every call sees in [`Ctx::now_ms`]; set it to move time.
    pub now_ms: i64,
    input_topic: String,
    next_offset: i64,
}

impl<P: Processor> Harness<P> {
    /// Partition 0 of the stage's input topic, empty stores, the clock at
    /// `now_ms`.
    pub fn new(config: Config, processor: P, now_ms: i64) -> Self {
        let spec = processor.spec();
        let stores = PartitionStores::new(Box::<MemBackend>::default(), spec.stores.len());
        let input_topic = config.topic(spec.input);
        Harness {
            processor,
            stores,
            config,
            partition: 0,
            now_ms,
            input_topic,
            next_offset: 0,
        }
    }

    /// The stage's input topic with the config's namespace.
    pub fn input_topic(&self) -> &str {
        &self.input_topic
    }

    /// One record with `key` and `value` at the next offset; its outputs.
    pub fn process(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Vec<Output>, StageError> {
        self.process_record(Record {
            key,
            value,
            ..Record::default()
        })
    }

    /// One record at the next offset, as the runtime runs it: on a reject
    /// its writes and outputs are dropped, `on_rejected` runs, and the
    /// reject is returned.
    pub fn process_record(&mut self, record: Record<'_>) -> Result<Vec<Output>, StageError> {
        let offset = self.next_offset;
        self.next_offset += 1;
        let rec = InputRecord {
            topic: &self.input_topic,
            partition: self.partition,
            offset,
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms,
        };
        let mut out = Vec::new();
        let mut ctx = Ctx {
            partition: self.partition,
            stores: &mut self.stores,
            out: &mut out,
            config: &self.config,
            now_ms: self.now_ms,
        };
        let result = process_atomically(&mut self.processor, &rec, &mut ctx);
        if let Err(StageError::Reject { code, .. }) = &result {
            self.processor.on_rejected(&rec, code, &mut ctx)?;
            out.clear();
        }
        result.map(|()| out)
    }

    /// A punctuation at the harness clock, as the runtime runs it (lineage
    /// expiry first); its outputs.
    pub fn punctuate(&mut self) -> Result<Vec<Output>, StageError> {
        let mut out = Vec::new();
        let now_ms = self.now_ms;
        let (processor, mut ctx) = self.split(&mut out);
        punctuate_partition(processor, &mut ctx, now_ms)?;
        Ok(out)
    }

    /// The processor flushes its caches into the stores, as the runtime has
    /// it do before each commit; the writes stay uncommitted. For tests
    /// that look at the stores between records without committing.
    pub fn flush(&mut self) -> Result<(), StageError> {
        let mut out = Vec::new();
        let (processor, mut ctx) = self.split(&mut out);
        processor.flush(&mut ctx)?;
        if !out.is_empty() {
            return Err(StageError::Fatal("flush emitted outputs".into()));
        }
        Ok(())
    }

    /// The transaction commits: the processor flushes its caches into the
    /// stores, the writes become durable.
    pub fn commit(&mut self) -> Result<(), StageError> {
        self.flush()?;
        self.stores.apply_committed(&[])?;
        Ok(())
    }

    /// The transaction aborts: its writes are gone and the processor forgets
    /// what it derived from them. The next records are the ones after the
    /// last commit, as after the runtime's rewind: replay them.
    pub fn abort(&mut self) {
        self.stores.rollback();
        self.processor.on_rollback();
    }

    /// The partition moves to another instance and back: uncommitted writes
    /// are lost, the committed state is what the changelog restores.
    pub fn revoke(&mut self) {
        self.stores.rollback();
        self.processor.on_revoked(self.partition);
    }

    /// One record of a table topic (logical name), as every instance reads it.
    pub fn table_record(&mut self, table: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.processor.on_table_record(table, key, value);
    }

    /// Runs `f` with the processor and a [`Ctx`] as a call inside
    /// [`Processor::process`] sees them (at the harness clock, without the
    /// per-record savepoint); its value and the outputs it emitted. For
    /// testing helpers that stages call with their `Ctx` (lineage,
    /// counters), e.g. through a [`Bare`] processor.
    pub fn with_ctx<T>(&mut self, f: impl FnOnce(&mut P, &mut Ctx<'_>) -> T) -> (T, Vec<Output>) {
        let mut out = Vec::new();
        let (processor, mut ctx) = self.split(&mut out);
        let value = f(processor, &mut ctx);
        (value, out)
    }

    fn split<'a>(&'a mut self, out: &'a mut Vec<Output>) -> (&'a mut P, Ctx<'a>) {
        let ctx = Ctx {
            partition: self.partition,
            stores: &mut self.stores,
            out,
            config: &self.config,
            now_ms: self.now_ms,
        };
        (&mut self.processor, ctx)
    }
}

/// A processor that does nothing with its records: a [`Harness`] over the
/// stores `spec` names, for testing code that takes a [`Ctx`] outside any
/// stage ([`Harness::with_ctx`]).
pub struct Bare(pub &'static StageSpec);

impl Processor for Bare {
    fn spec(&self) -> &'static StageSpec {
        self.0
    }

    fn process(&mut self, _rec: &InputRecord<'_>, _ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPEC: StageSpec = StageSpec {
        name: "toy",
        input: "usage.events",
        outputs: &["usage.validated"],
        tables: &[],
        stores: &["seen"],
        summary: "counts records; rejects the value \"bad\" after writing",
    };

    /// Writes the record's value and emits it, then rejects "bad" anyway:
    /// the runtime must leave nothing of that record behind.
    struct Toy {
        rejected: Vec<&'static str>,
    }

    impl Processor for Toy {
        fn spec(&self) -> &'static StageSpec {
            &SPEC
        }
        fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
            let value = rec.value.unwrap_or_default().to_vec();
            ctx.stores
                .put(0, value.clone(), ctx.now_ms.to_string().into_bytes());
            ctx.emit(Output {
                topic: "x".into(),
                key: None,
                value: Some(value.clone()),
                headers: Vec::new(),
                partition: None,
            });
            if value == b"bad" {
                return Err(StageError::Reject {
                    code: "bad_value",
                    message: "bad".into(),
                });
            }
            Ok(())
        }
        fn on_rejected(
            &mut self,
            _rec: &InputRecord<'_>,
            code: &'static str,
            ctx: &mut Ctx<'_>,
        ) -> Result<(), StageError> {
            self.rejected.push(code);
            ctx.stores.put(0, b"rejections".to_vec(), b"1".to_vec());
            Ok(())
        }
    }

    fn harness() -> Harness<Toy> {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let config = Config::from_parts("", "test", &[], dir).unwrap();
        Harness::new(
            config,
            Toy {
                rejected: Vec::new(),
            },
            1_000,
        )
    }

    #[test]
    fn a_rejected_record_leaves_no_write_and_no_output() {
        let mut h = harness();
        assert_eq!(h.process(None, Some(b"good")).unwrap().len(), 1);
        let err = h.process(None, Some(b"bad")).unwrap_err();
        assert!(matches!(
            err,
            StageError::Reject {
                code: "bad_value",
                ..
            }
        ));
        assert_eq!(h.processor.rejected, vec!["bad_value"]);
        h.commit().unwrap();
        assert_eq!(h.stores.get(0, b"good").unwrap(), Some(b"1000".to_vec()));
        assert_eq!(h.stores.get(0, b"bad").unwrap(), None);
        // on_rejected's own writes are kept.
        assert_eq!(h.stores.get(0, b"rejections").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn abort_and_revoke_drop_the_open_transaction_and_the_clock_is_pinned() {
        let mut h = harness();
        h.process(None, Some(b"a")).unwrap();
        h.commit().unwrap();
        h.now_ms = 2_000;
        h.process(None, Some(b"b")).unwrap();
        h.abort();
        assert_eq!(h.stores.get(0, b"b").unwrap(), None);
        h.process(None, Some(b"c")).unwrap();
        h.revoke();
        assert_eq!(h.stores.get(0, b"c").unwrap(), None);
        assert_eq!(h.stores.get(0, b"a").unwrap(), Some(b"1000".to_vec()));
        h.process(None, Some(b"d")).unwrap();
        h.commit().unwrap();
        assert_eq!(h.stores.get(0, b"d").unwrap(), Some(b"2000".to_vec()));
        assert_eq!(h.input_topic(), "usage.events");
    }
}
