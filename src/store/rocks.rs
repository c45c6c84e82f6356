//! The RocksDB backend: one database per (stage, partition).
//!
//! Layout: `[store id][key]` for data and `[META][store id]` for the
//! changelog checkpoint (i64, big-endian), written in the same `WriteBatch`
//! as the data it covers, so a crash can never separate the two.
//!
//! Writes go through RocksDB's write-ahead log unless
//! `runtime.store_write_ahead_log = false`. Without it nothing is lost
//! either: the database is a cache of the changelog and the checkpoint
//! travels in the batch it covers, so a crash loses only a suffix of batches
//! (the memtables not yet flushed) together with their checkpoint, and the
//! restore reads that suffix again from the changelog. A clean close flushes
//! the memtables (RocksDB does so for writes that skipped the log).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rocksdb::{
    Cache, Direction, IteratorMode, Options, WriteBatch, WriteBufferManager, WriteOptions, DB,
};

use super::{Backend, Entries, StoreError, StoreId, Writes};

/// Prefix of the metadata keys; store ids are below it.
const META_PREFIX: u8 = 0xFF;
/// Bloom filter size: 10 bits per key is about a 1% false-positive rate.
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Share of a memtable's size given to its bloom filter of whole keys, so
/// a lookup of a key the memtable does not hold skips its skiplist search.
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;
/// A stage has fewer stores than this (ids must stay below META_PREFIX).
pub const MAX_STORES_PER_STAGE: usize = 16;

/// `runtime.store_memory_mb` unless configured.
pub const DEFAULT_STORE_MEMORY_MB: usize = 256;
/// Bounds of `runtime.store_memory_mb`.
pub const MIN_STORE_MEMORY_MB: usize = 16;
pub const MAX_STORE_MEMORY_MB: usize = 64 * 1024;
/// Share of the store memory the memtables may hold before RocksDB flushes
/// them, percent.
const MEMTABLE_SHARE_PCT: usize = 50;
/// One memtable of one database (RocksDB's default is 64 MiB, per database:
/// a stage process opens one per partition, so the default alone could
/// hold 6 x 2 x 64 MiB). The shared budget above flushes earlier when the
/// process's memtables together exceed it.
const WRITE_BUFFER_BYTES: usize = 16 * 1024 * 1024;
const BYTES_PER_MB: usize = 1024 * 1024;

/// The memory every RocksDB database of a process shares: one LRU block
/// cache for data, index and filter blocks, and a write-buffer manager that
/// charges the memtables to that cache, so the stores of a process stay
/// within `runtime.store_memory_mb` however many partitions it holds and
/// however much state they keep on disk.
#[derive(Clone)]
pub struct StoreMemory {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl StoreMemory {
    pub fn new(memory_mb: usize) -> Self {
        let bytes = memory_mb.clamp(MIN_STORE_MEMORY_MB, MAX_STORE_MEMORY_MB) * BYTES_PER_MB;
        let cache = Cache::new_lru_cache(bytes);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            bytes * MEMTABLE_SHARE_PCT / 100,
            false,
            cache.clone(),
        );
        StoreMemory {
            cache,
            write_buffers,
        }
    }

    /// The process's, sized by the first caller (one config per process).
    pub fn process(memory_mb: usize) -> &'static StoreMemory {
        static PROCESS: OnceLock<StoreMemory> = OnceLock::new();
        PROCESS.get_or_init(|| StoreMemory::new(memory_mb))
    }

    /// (block cache in use including the memtables charged to it, memtables), bytes.
    pub fn usage_bytes(&self) -> (usize, usize) {
        (self.cache.get_usage(), self.write_buffers.get_usage())
    }
}

pub struct RocksBackend {
    db: DB,
    path: PathBuf,
    /// How `apply` writes: through the write-ahead log unless told not to.
    write: WriteOptions,
}

impl RocksBackend {
    pub fn open(path: &Path, memory: &StoreMemory) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Rocks {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
        opts.set_write_buffer_manager(&memory.write_buffers);
        // Most lookups miss (a new event's dedupe and lineage keys): a bloom
        // filter answers those without reading data blocks. Index and filter
        // blocks live in the shared cache (they grow with the data on disk),
        // those of the newest files pinned there.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
        table.set_block_cache(&memory.cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        let db = DB::open(&opts, path).map_err(|e| StoreError::Rocks {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(RocksBackend {
            db,
            path: path.to_path_buf(),
            write: write_options(true),
        })
    }

    /// Writes through RocksDB's write-ahead log (`on`, the default) or not:
    /// see the module documentation for why the log is optional.
    pub fn with_write_ahead_log(mut self, on: bool) -> Self {
        self.write = write_options(on);
        self
    }

    /// Opens the database of one (stage, partition) that holds `stores`
    /// (names in store-id order). Store ids are positions in that list, so
    /// a database written under another list (a stage that gained, lost or
    /// moved a store in an upgrade, or one written before the list was
    /// recorded) would read one store's data as another's, checkpoint
    /// included: it is wiped first, and every store is then restored from
    /// its changelog (the database is a cache of them). The list is kept in
    /// `<path>.stores` beside the database. Returns whether it wiped.
    pub fn open_for(
        path: &Path,
        stores: &[&str],
        memory: &StoreMemory,
    ) -> Result<(Self, bool), StoreError> {
        let layout_path = path.with_extension("stores");
        let want = stores.join("\n");
        let io = |e: std::io::Error| StoreError::Rocks {
            path: layout_path.display().to_string(),
            message: e.to_string(),
        };
        let same = std::fs::read_to_string(&layout_path).is_ok_and(|have| have == want);
        let stale = !same && path.exists();
        if stale {
            Self::destroy(path)?;
        }
        if !same {
            if let Some(dir) = layout_path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            std::fs::write(&layout_path, want.as_bytes()).map_err(io)?;
        }
        Ok((Self::open(path, memory)?, stale))
    }

    /// Deletes a store directory (a lost volume, or a wipe).
    pub fn destroy(path: &Path) -> Result<(), StoreError> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| StoreError::Rocks {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Bytes in this database's memtables (active and not yet flushed).
    pub fn memtable_bytes(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.cur-size-all-mem-tables")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    fn err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn data_key(store: StoreId, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(store);
        k.extend_from_slice(key);
        k
    }
}

fn write_options(write_ahead_log: bool) -> WriteOptions {
    let mut w = WriteOptions::default();
    w.disable_wal(!write_ahead_log);
    w
}

impl Backend for RocksBackend {
    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(Self::data_key(store, key))
            .map_err(|e| self.err(e))
    }

    fn scan(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let start = Self::data_key(store, from);
        let end = Self::data_key(store, to);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.as_ref() >= end.as_slice() || out.len() >= limit {
                break;
            }
            // Every key of the store starts with its one-byte prefix.
            out.push((k.get(1..).unwrap_or_default().to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn apply(
        &mut self,
        writes: &[(StoreId, &Writes)],
        checkpoints: &[(StoreId, i64)],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (store, w) in writes {
            debug_assert!((*store as usize) < MAX_STORES_PER_STAGE);
            for (k, v) in w.iter() {
                match v {
                    Some(v) => batch.put(Self::data_key(*store, k), v),
                    None => batch.delete(Self::data_key(*store, k)),
                }
            }
        }
        for (store, offset) in checkpoints {
            batch.put([META_PREFIX, *store], offset.to_be_bytes());
        }
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| self.err(e))
    }

    fn checkpoint(&self, store: StoreId) -> Result<Option<i64>, StoreError> {
        match self.db.get([META_PREFIX, store]).map_err(|e| self.err(e))? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                Ok(Some(i64::from_be_bytes(b)))
            }
            _ => Ok(None),
        }
    }

    fn approximate_keys(&self, store: StoreId) -> u64 {
        // RocksDB only estimates keys for the whole DB; the stores of a stage
        // share one, so count exactly only when small and otherwise estimate.
        let total = self
            .db
            .property_int_value("rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0);
        let _ = store;
        total
    }

    fn table_reader_bytes(&self) -> u64 {
        // Index and filter blocks are cached (`cache_index_and_filter_blocks`):
        // this is what each open SST file keeps besides (its reader, metadata,
        // properties), which grows with the number of files.
        self.db
            .property_int_value("rocksdb.estimate-table-readers-mem")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> StoreMemory {
        StoreMemory::new(MIN_STORE_MEMORY_MB)
    }

    #[test]
    fn data_and_checkpoint_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = RocksBackend::open(dir.path(), &memory()).unwrap();
            let mut w = Writes::new();
            w.insert(b"k1".to_vec(), Some(b"v1".to_vec()));
            w.insert(b"k2".to_vec(), Some(b"v2".to_vec()));
            db.apply(&[(0, &w)], &[(0, 41)]).unwrap();
            let mut d = Writes::new();
            d.insert(b"k2".to_vec(), None);
            db.apply(&[(0, &d)], &[(0, 42)]).unwrap();
        }
        let db = RocksBackend::open(dir.path(), &memory()).unwrap();
        assert_eq!(db.get(0, b"k1").unwrap().unwrap(), b"v1");
        assert_eq!(db.get(0, b"k2").unwrap(), None);
        assert_eq!(db.get(1, b"k1").unwrap(), None);
        assert_eq!(db.checkpoint(0).unwrap(), Some(42));
        assert_eq!(db.checkpoint(1).unwrap(), None);
        let all = db.scan(0, b"", b"\xff", 10).unwrap();
        assert_eq!(all, vec![(b"k1".to_vec(), b"v1".to_vec())]);
    }

    fn write_one(db: &mut RocksBackend) {
        let mut w = Writes::new();
        w.insert(b"k".to_vec(), Some(b"v".to_vec()));
        db.apply(&[(0, &w)], &[(0, 7)]).unwrap();
    }

    #[test]
    fn a_database_written_under_another_store_list_is_wiped() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("3");
        // Written before the list was recorded: wiped on the first open_for.
        write_one(&mut RocksBackend::open(&path, &memory()).unwrap());
        let (db, wiped) = RocksBackend::open_for(&path, &["dedupe", "lineage"], &memory()).unwrap();
        assert!(wiped);
        assert_eq!(db.checkpoint(0).unwrap(), None);
        let mut db = db;
        write_one(&mut db);
        drop(db);
        // The same list: kept.
        let (db, wiped) = RocksBackend::open_for(&path, &["dedupe", "lineage"], &memory()).unwrap();
        assert!(!wiped);
        assert_eq!(db.checkpoint(0).unwrap(), Some(7));
        assert_eq!(db.get(0, b"k").unwrap().unwrap(), b"v");
        drop(db);
        // Store 0 is another store now: wiped, never read as lineage.
        let (db, wiped) =
            RocksBackend::open_for(&path, &["lineage", "counters"], &memory()).unwrap();
        assert!(wiped);
        assert_eq!(db.checkpoint(0).unwrap(), None);
        assert_eq!(db.get(0, b"k").unwrap(), None);
        drop(db);
        // A new partition: nothing to wipe.
        let (_, wiped) = RocksBackend::open_for(&root.path().join("4"), &["a"], &memory()).unwrap();
        assert!(!wiped);
    }

    /// Set in the child process of the crash test: where it writes, and
    /// whether through the write-ahead log.
    const CRASH_DIR_ENV: &str = "METERLINE_TEST_ROCKS_CRASH_DIR";
    const CRASH_WAL_ENV: &str = "METERLINE_TEST_ROCKS_CRASH_WAL";
    /// 400 batches of 32 x 4 KiB: 50 MiB, several flushes of the 8 MiB
    /// memtable budget of the smallest store memory.
    const CRASH_BATCHES: u32 = 400;
    const CRASH_KEYS_PER_BATCH: u32 = 32;
    const CRASH_VALUE_BYTES: usize = 4096;

    fn crash_key(batch: u32, i: u32) -> Vec<u8> {
        format!("b{batch:05}-{i:03}").into_bytes()
    }

    /// What the crash child prints once every batch is written.
    const CRASH_WRITTEN: &str = "crash child: all batches written";

    /// The child of `a_crash_keeps_whole_batches_with_their_checkpoint`
    /// (does nothing when run on its own): writes every batch with its
    /// checkpoint, says so, and waits to be killed (SIGKILL: the database
    /// is never closed).
    #[test]
    fn crash_child_writes_then_waits_to_be_killed() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let wal = std::env::var(CRASH_WAL_ENV).is_ok_and(|v| v == "1");
        let mut db = RocksBackend::open(Path::new(&dir), &memory())
            .unwrap()
            .with_write_ahead_log(wal);
        let value = vec![0x5a; CRASH_VALUE_BYTES];
        for batch in 0..CRASH_BATCHES {
            let mut w = Writes::new();
            for i in 0..CRASH_KEYS_PER_BATCH {
                w.insert(crash_key(batch, i), Some(value.clone()));
            }
            db.apply(&[(0, &w)], &[(0, i64::from(batch))]).unwrap();
        }
        println!("{CRASH_WRITTEN}");
        std::thread::sleep(std::time::Duration::from_secs(600));
    }

    /// Runs the child above, kills it, and returns the checkpoint the
    /// database holds after the crash, having checked that the data is
    /// exactly the batches up to that checkpoint: never a batch without its
    /// checkpoint, never a checkpoint without its batch, never part of one.
    fn crash_and_reopen(wal: bool) -> Option<i64> {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::rocks::tests::crash_child_writes_then_waits_to_be_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .env(CRASH_WAL_ENV, if wal { "1" } else { "0" })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let written = out
            .lines()
            .any(|l| l.is_ok_and(|l| l.ends_with(CRASH_WRITTEN)));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(written, "the child wrote every batch");
        let db = RocksBackend::open(dir.path(), &memory()).unwrap();
        let checkpoint = db.checkpoint(0).unwrap();
        for batch in 0..CRASH_BATCHES {
            let want = checkpoint.is_some_and(|c| i64::from(batch) <= c);
            for i in [0, CRASH_KEYS_PER_BATCH - 1] {
                let have = db.get(0, &crash_key(batch, i)).unwrap().is_some();
                assert_eq!(
                    have, want,
                    "batch {batch} key {i}, checkpoint {checkpoint:?}"
                );
            }
        }
        checkpoint
    }

    #[test]
    fn a_crash_keeps_whole_batches_with_their_checkpoint() {
        let last = i64::from(CRASH_BATCHES - 1);
        // Without the log the unflushed memtable is lost, checkpoint and
        // all: the restore reads those batches again from the changelog.
        let without = crash_and_reopen(false);
        assert!(without.is_none_or(|c| c < last), "checkpoint {without:?}");
        // With it, every batch survives.
        assert_eq!(crash_and_reopen(true), Some(last));
    }

    #[test]
    fn the_databases_of_a_process_share_one_memtable_budget() {
        // 16 MiB of store memory: memtables flush beyond 8 MiB in total,
        // however many databases write. Four databases each given 10 MiB
        // would hold 40 MiB of memtables with per-database buffers alone
        // (16 MiB each, none full).
        let mem = StoreMemory::new(MIN_STORE_MEMORY_MB);
        let budget = (MIN_STORE_MEMORY_MB * BYTES_PER_MB * MEMTABLE_SHARE_PCT / 100) as u64;
        let root = tempfile::tempdir().unwrap();
        let mut dbs: Vec<RocksBackend> = (0..4)
            .map(|i| RocksBackend::open(&root.path().join(i.to_string()), &mem).unwrap())
            .collect();
        let value: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for batch in 0..80u32 {
            for (d, db) in dbs.iter_mut().enumerate() {
                let mut w = Writes::new();
                for i in 0..32u32 {
                    let mut v = value.clone();
                    v[..4].copy_from_slice(&(batch * 32 + i).to_be_bytes());
                    w.insert(format!("k{d}-{batch}-{i}").into_bytes(), Some(v));
                }
                db.apply(&[(0, &w)], &[(0, i64::from(batch))]).unwrap();
            }
        }
        // Flushes run in the background. RocksDB flushes the database being
        // written to once the memtables of all exceed the budget, unless
        // that database is flushing already (its memtable then grows past
        // its share until its next write): as traffic would, keep writing
        // one small record to each while waiting. It charges memtable
        // memory in arena blocks (an eighth of the write buffer): each
        // database may hold one more.
        let arena_block = (WRITE_BUFFER_BYTES / 8) as u64;
        let bound = budget + dbs.len() as u64 * arena_block;
        let total =
            |dbs: &[RocksBackend]| dbs.iter().map(RocksBackend::memtable_bytes).sum::<u64>();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut nudge = 0u32;
        while total(&dbs) > bound && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            nudge += 1;
            for db in &mut dbs {
                let mut w = Writes::new();
                w.insert(format!("nudge-{nudge}").into_bytes(), Some(vec![1]));
                db.apply(&[(1, &w)], &[]).unwrap();
            }
        }
        assert!(
            total(&dbs) <= bound,
            "memtables hold {} bytes, budget {budget}, bound {bound}",
            total(&dbs)
        );
        // Nothing was lost to the flushes.
        assert_eq!(
            dbs[3].get(0, b"k3-79-31").unwrap().unwrap()[..4],
            (79u32 * 32 + 31).to_be_bytes()
        );
    }
}
