//! State stores: RocksDB per assigned partition, behind a small trait, with a
//! transaction overlay and a changelog checkpoint.
//!
//! The rule that makes crashes safe: **the local store never runs ahead of
//! what Kafka committed.** During a transaction a stage's writes live only in
//! an in-memory overlay (reads see them: read-your-writes). At commit the
//! runtime sends the overlay to the store's compacted changelog topic inside
//! the Kafka transaction; only after `commit_transaction` succeeds is the
//! overlay written to RocksDB, in one atomic write batch together with the
//! changelog offset it reached (the checkpoint). An abort just drops the
//! overlay. On (re)assignment the store replays its changelog from
//! checkpoint + 1 to the end under read_committed, so a store that fell behind
//! (crash between commit and apply, or another instance owned the partition
//! meanwhile) catches up, and aborted writes are never seen.

pub mod keys;
pub mod rocks;

use std::collections::BTreeMap;
use std::ops::Bound;

/// Index of a store within its stage (the stage's `stores` list order).
pub type StoreId = u8;

/// Key-value pairs read by a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes of one store: key -> new value, or None for a delete.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {message}")]
    Rocks { path: String, message: String },
    #[error("store {0} is not open")]
    NotOpen(String),
    #[error("store {store}: a counter of {len} bytes (one is written as 8)")]
    BadCounter { store: StoreId, len: usize },
}

/// Durable key-value state of one partition: a RocksDB in production, a map in
/// unit tests.
pub trait Backend: Send {
    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `from <= key < to`, in key order, at most `limit`.
    fn scan(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError>;
    /// Applies writes and checkpoints atomically.
    fn apply(
        &mut self,
        writes: &[(StoreId, &Writes)],
        checkpoints: &[(StoreId, i64)],
    ) -> Result<(), StoreError>;
    /// Last changelog offset applied, if any.
    fn checkpoint(&self, store: StoreId) -> Result<Option<i64>, StoreError>;
    /// Approximate number of keys, for metrics.
    fn approximate_keys(&self, store: StoreId) -> u64;
    /// Memory held for the data on disk outside any bounded cache, bytes,
    /// for metrics (0 where nothing is on disk).
    fn table_reader_bytes(&self) -> u64 {
        0
    }
}

/// In-memory backend for unit tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemBackend {
    data: BTreeMap<(StoreId, Vec<u8>), Vec<u8>>,
    checkpoints: BTreeMap<StoreId, i64>,
}

impl Backend for MemBackend {
    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data.get(&(store, key.to_vec())).cloned())
    }
    fn scan(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        Ok(self
            .data
            .range((store, from.to_vec())..(store, to.to_vec()))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
    fn apply(
        &mut self,
        writes: &[(StoreId, &Writes)],
        checkpoints: &[(StoreId, i64)],
    ) -> Result<(), StoreError> {
        for (store, w) in writes {
            for (k, v) in w.iter() {
                match v {
                    Some(v) => {
                        self.data.insert((*store, k.clone()), v.clone());
                    }
                    None => {
                        self.data.remove(&(*store, k.clone()));
                    }
                }
            }
        }
        for (s, o) in checkpoints {
            self.checkpoints.insert(*s, *o);
        }
        Ok(())
    }
    fn checkpoint(&self, store: StoreId) -> Result<Option<i64>, StoreError> {
        Ok(self.checkpoints.get(&store).copied())
    }
    fn approximate_keys(&self, store: StoreId) -> u64 {
        self.data.keys().filter(|(s, _)| *s == store).count() as u64
    }
}

/// One overlay write since a savepoint: the store, the key and the overlay
/// entry it replaced (None: the key was not in the overlay).
type Undo = (StoreId, Vec<u8>, Option<Option<Vec<u8>>>);

/// The stores of one partition: a durable backend plus the open transaction's
/// overlay per store.
pub struct PartitionStores {
    backend: Box<dyn Backend>,
    overlays: Vec<Writes>,
    /// Since the last [`savepoint`](Self::savepoint): each overlay write,
    /// to undo it.
    undo: Vec<Undo>,
    savepoint_open: bool,
}

// A `StoreId` is the index of a store the stage declared (`StageSpec::stores`),
// and there is one overlay per declared store: an id out of range is a bug in
// the stage, which a panic shows in its first test, where returning "not
// found" or dropping the write would lose data silently.
#[allow(clippy::indexing_slicing)]
impl PartitionStores {
    pub fn new(backend: Box<dyn Backend>, store_count: usize) -> Self {
        PartitionStores {
            backend,
            overlays: vec![Writes::new(); store_count],
            undo: Vec::new(),
            savepoint_open: false,
        }
    }

    pub fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlays[store as usize].get(key) {
            return Ok(v.clone());
        }
        self.backend.get(store, key)
    }

    /// The committed value (the backend), ignoring the open transaction.
    pub fn committed_get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.get(store, key)
    }

    /// Committed entries in `[from, to)` (the backend), ignoring the open
    /// transaction.
    pub fn committed_scan(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.backend.scan(store, from, to, limit)
    }

    /// A counter kept under `key` (u64, big-endian; absent = 0).
    pub fn get_counter(&self, store: StoreId, key: &[u8]) -> Result<u64, StoreError> {
        match self.get(store, key)? {
            None => Ok(0),
            Some(b) => <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::BadCounter {
                    store,
                    len: b.len(),
                }),
        }
    }

    pub fn put_counter(&mut self, store: StoreId, key: &[u8], value: u64) {
        self.put(store, key.to_vec(), value.to_be_bytes().to_vec());
    }

    pub fn put(&mut self, store: StoreId, key: Vec<u8>, value: Vec<u8>) {
        self.write(store, key, Some(value));
    }

    pub fn delete(&mut self, store: StoreId, key: Vec<u8>) {
        self.write(store, key, None);
    }

    fn write(&mut self, store: StoreId, key: Vec<u8>, value: Option<Vec<u8>>) {
        let overlay = &mut self.overlays[store as usize];
        if self.savepoint_open {
            let replaced = overlay.insert(key.clone(), value);
            self.undo.push((store, key, replaced));
        } else {
            overlay.insert(key, value);
        }
    }

    /// Marks the open transaction's writes so far: the runtime sets one
    /// before each record, so that a rejected record's writes can be undone
    /// ([`rollback_to_savepoint`](Self::rollback_to_savepoint)) while the
    /// transaction's other writes stay.
    pub fn savepoint(&mut self) {
        self.undo.clear();
        self.savepoint_open = true;
    }

    /// Undoes every write since the last [`savepoint`](Self::savepoint) and
    /// closes it.
    pub fn rollback_to_savepoint(&mut self) {
        for (store, key, replaced) in self.undo.drain(..).rev() {
            let overlay = &mut self.overlays[store as usize];
            match replaced {
                Some(entry) => overlay.insert(key, entry),
                None => overlay.remove(&key),
            };
        }
        self.savepoint_open = false;
    }

    /// Keeps the writes since the last savepoint and closes it.
    pub fn release_savepoint(&mut self) {
        self.undo.clear();
        self.savepoint_open = false;
    }

    /// Entries with `from <= key < to` as the transaction sees them (overlay
    /// merged over the backend), in key order, at most `limit`.
    pub fn scan(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let overlay = &self.overlays[store as usize];
        // Deleted keys in the overlay may hide backend entries, so read enough
        // backend entries to still fill `limit`.
        let hidden = overlay
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
            .count();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .backend
            .scan(store, from, to, limit.saturating_add(hidden))?
            .into_iter()
            .collect();
        for (k, v) in overlay.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to))) {
            match v {
                Some(v) => {
                    merged.insert(k.clone(), v.clone());
                }
                None => {
                    merged.remove(k);
                }
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// The open transaction's writes of a store (what goes to its changelog).
    pub fn pending(&self, store: StoreId) -> &Writes {
        &self.overlays[store as usize]
    }

    pub fn has_pending(&self) -> bool {
        self.overlays.iter().any(|o| !o.is_empty())
    }

    /// After the Kafka transaction committed: make the overlay durable with the
    /// changelog offsets it reached, then clear it.
    pub fn apply_committed(&mut self, checkpoints: &[(StoreId, i64)]) -> Result<(), StoreError> {
        let writes: Vec<(StoreId, &Writes)> = self
            .overlays
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_empty())
            .map(|(i, w)| (i as StoreId, w))
            .collect();
        if !writes.is_empty() || !checkpoints.is_empty() {
            self.backend.apply(&writes, checkpoints)?;
        }
        for o in &mut self.overlays {
            o.clear();
        }
        self.release_savepoint();
        Ok(())
    }

    /// After an abort: forget the transaction's writes.
    pub fn rollback(&mut self) {
        for o in &mut self.overlays {
            o.clear();
        }
        self.release_savepoint();
    }

    /// Applies restored changelog records directly (no overlay: they are committed).
    pub fn restore(
        &mut self,
        store: StoreId,
        writes: &Writes,
        checkpoint: i64,
    ) -> Result<(), StoreError> {
        self.backend
            .apply(&[(store, writes)], &[(store, checkpoint)])
    }

    pub fn checkpoint(&self, store: StoreId) -> Result<Option<i64>, StoreError> {
        self.backend.checkpoint(store)
    }

    pub fn approximate_keys(&self, store: StoreId) -> u64 {
        self.backend.approximate_keys(store)
    }

    /// See [`Backend::table_reader_bytes`].
    pub fn table_reader_bytes(&self) -> u64 {
        self.backend.table_reader_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> PartitionStores {
        PartitionStores::new(Box::<MemBackend>::default(), 2)
    }

    #[test]
    fn counters_read_zero_when_absent_and_refuse_a_value_of_another_width() {
        let mut s = stores();
        assert_eq!(s.get_counter(0, b"n").unwrap(), 0);
        s.put_counter(0, b"n", u64::MAX - 1);
        assert_eq!(s.get_counter(0, b"n").unwrap(), u64::MAX - 1);
        s.put(0, b"n".to_vec(), vec![1, 2, 3]);
        assert!(matches!(
            s.get_counter(0, b"n"),
            Err(StoreError::BadCounter { store: 0, len: 3 })
        ));
    }

    #[test]
    fn a_savepoint_undoes_only_the_writes_after_it() {
        let mut s = stores();
        s.put(0, b"committed".to_vec(), b"c".to_vec());
        s.apply_committed(&[]).unwrap();
        // Earlier records of the open transaction.
        s.put(0, b"a".to_vec(), b"1".to_vec());
        s.delete(1, b"b".to_vec());
        s.savepoint();
        // The rejected record: overwrites, deletes, new keys, twice the same key.
        s.put(0, b"a".to_vec(), b"2".to_vec());
        s.put(0, b"a".to_vec(), b"3".to_vec());
        s.put(1, b"b".to_vec(), b"x".to_vec());
        s.delete(0, b"committed".to_vec());
        s.put(0, b"new".to_vec(), b"n".to_vec());
        s.rollback_to_savepoint();
        assert_eq!(s.get(0, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(1, b"b").unwrap(), None);
        assert_eq!(s.get(0, b"committed").unwrap(), Some(b"c".to_vec()));
        assert_eq!(s.get(0, b"new").unwrap(), None);
        // Exactly the earlier records' writes go to the changelog.
        assert_eq!(s.pending(0).len(), 1);
        assert_eq!(s.pending(1).get(&b"b"[..]), Some(&None));
        // A released savepoint keeps its writes; writes without one are kept.
        s.savepoint();
        s.put(0, b"kept".to_vec(), b"k".to_vec());
        s.release_savepoint();
        s.rollback_to_savepoint();
        s.put(0, b"also".to_vec(), b"k".to_vec());
        s.rollback_to_savepoint();
        assert_eq!(s.get(0, b"kept").unwrap(), Some(b"k".to_vec()));
        assert_eq!(s.get(0, b"also").unwrap(), Some(b"k".to_vec()));
    }

    #[test]
    fn reads_see_the_overlay_and_rollback_forgets_it() {
        let mut s = stores();
        s.put(0, b"a".to_vec(), b"1".to_vec());
        s.apply_committed(&[(0, 10)]).unwrap();
        s.put(0, b"a".to_vec(), b"2".to_vec());
        s.delete(0, b"b".to_vec());
        assert_eq!(s.get(0, b"a").unwrap().unwrap(), b"2");
        s.rollback();
        assert_eq!(s.get(0, b"a").unwrap().unwrap(), b"1");
        assert_eq!(s.checkpoint(0).unwrap(), Some(10));
        assert_eq!(s.checkpoint(1).unwrap(), None);
    }

    #[test]
    fn stores_are_isolated() {
        let mut s = stores();
        s.put(0, b"k".to_vec(), b"0".to_vec());
        s.put(1, b"k".to_vec(), b"1".to_vec());
        s.apply_committed(&[]).unwrap();
        assert_eq!(s.get(0, b"k").unwrap().unwrap(), b"0");
        assert_eq!(s.get(1, b"k").unwrap().unwrap(), b"1");
    }

    #[test]
    fn scan_merges_overlay_deletes_and_respects_limit() {
        let mut s = stores();
        for k in [b"a", b"b", b"c", b"d"] {
            s.put(0, k.to_vec(), k.to_vec());
        }
        s.apply_committed(&[]).unwrap();
        s.delete(0, b"a".to_vec());
        s.delete(0, b"b".to_vec());
        s.put(0, b"bb".to_vec(), b"x".to_vec());
        let got = s.scan(0, b"a", b"z", 2).unwrap();
        let keys: Vec<_> = got.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![b"bb".to_vec(), b"c".to_vec()]);
        let all = s.scan(0, b"a", b"c", 100).unwrap();
        assert_eq!(all.len(), 1);
    }
}
