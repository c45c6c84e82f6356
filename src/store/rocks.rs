//! The RocksDB backend: one database per (stage, partition).
//!
//! Layout: `[store id][key]` for data and `[META][store id]` for the
//! changelog checkpoint (i64, big-endian), written in the same `WriteBatch`
//! as the data it covers, so a crash can never separate the two.

use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, DB};

use super::{Backend, Entries, StoreError, StoreId, Writes};

/// Prefix of the metadata keys; store ids are below it.
const META_PREFIX: u8 = 0xFF;
/// Bloom filter size: 10 bits per key is about a 1% false-positive rate.
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// A stage has fewer stores than this (ids must stay below META_PREFIX).
pub const MAX_STORES_PER_STAGE: usize = 16;

pub struct RocksBackend {
    db: DB,
    path: PathBuf,
}

impl RocksBackend {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Rocks {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Most lookups miss (a new event's dedupe and lineage keys): a bloom
        // filter answers those without reading data blocks.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(|e| StoreError::Rocks {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(RocksBackend {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Opens the database of one (stage, partition) that holds `stores`
    /// (names in store-id order). Store ids are positions in that list, so
    /// a database written under another list (a stage that gained, lost or
    /// moved a store in an upgrade, or one written before the list was
    /// recorded) would read one store's data as another's, checkpoint
    /// included: it is wiped first, and every store is then restored from
    /// its changelog (the database is a cache of them). The list is kept in
    /// `<path>.stores` beside the database. Returns whether it wiped.
    pub fn open_for(path: &Path, stores: &[&str]) -> Result<(Self, bool), StoreError> {
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
        Ok((Self::open(path)?, stale))
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
        self.db.write(batch).map_err(|e| self.err(e))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_checkpoint_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = RocksBackend::open(dir.path()).unwrap();
            let mut w = Writes::new();
            w.insert(b"k1".to_vec(), Some(b"v1".to_vec()));
            w.insert(b"k2".to_vec(), Some(b"v2".to_vec()));
            db.apply(&[(0, &w)], &[(0, 41)]).unwrap();
            let mut d = Writes::new();
            d.insert(b"k2".to_vec(), None);
            db.apply(&[(0, &d)], &[(0, 42)]).unwrap();
        }
        let db = RocksBackend::open(dir.path()).unwrap();
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
        write_one(&mut RocksBackend::open(&path).unwrap());
        let (db, wiped) = RocksBackend::open_for(&path, &["dedupe", "lineage"]).unwrap();
        assert!(wiped);
        assert_eq!(db.checkpoint(0).unwrap(), None);
        let mut db = db;
        write_one(&mut db);
        drop(db);
        // The same list: kept.
        let (db, wiped) = RocksBackend::open_for(&path, &["dedupe", "lineage"]).unwrap();
        assert!(!wiped);
        assert_eq!(db.checkpoint(0).unwrap(), Some(7));
        assert_eq!(db.get(0, b"k").unwrap().unwrap(), b"v");
        drop(db);
        // Store 0 is another store now: wiped, never read as lineage.
        let (db, wiped) = RocksBackend::open_for(&path, &["lineage", "counters"]).unwrap();
        assert!(wiped);
        assert_eq!(db.checkpoint(0).unwrap(), None);
        assert_eq!(db.get(0, b"k").unwrap(), None);
        drop(db);
        // A new partition: nothing to wipe.
        let (_, wiped) = RocksBackend::open_for(&root.path().join("4"), &["a"]).unwrap();
        assert!(!wiped);
    }
}
