//! The C heap of a stage process: RocksDB's and librdkafka's allocations
//! (Rust's own go to mimalloc, the global allocator). Measured so a soak can
//! tell memory the C side still uses (the block cache, table readers,
//! librdkafka's buffers) from memory glibc freed but holds (fragmentation of
//! its arenas, which RSS counts while the pages stay touched).
//!
//! It also returns that free memory to the system now and then
//! ([`start_trimming`]): a 30-minute soak (2026-12-06) showed validate's
//! and enrich's resident memory rising by ~26 MB each in the second half,
//! all of it glibc holding freed memory (RocksDB's block cache churning
//! through its arenas), none of it in use.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::debug;

/// How often the process's glibc heap is trimmed.
pub const HEAP_TRIM_INTERVAL_MS: u64 = 30_000;
/// Trim only when glibc holds at least this much free (a trim walks every
/// arena under its lock: not worth it for a little).
pub const HEAP_TRIM_MIN_FREE_BYTES: usize = 8 * 1024 * 1024;

/// glibc's heap, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeHeap {
    /// Allocated and not freed: arena chunks in use plus mmap'ed blocks.
    pub in_use_bytes: usize,
    /// Freed to glibc but kept in its arenas (not returned to the system).
    pub free_bytes: usize,
}

/// The process's glibc heap, where glibc is the C allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn native_heap() -> Option<NativeHeap> {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's
    // statistics (under its arena locks); it returns a plain struct.
    let m = unsafe { libc::mallinfo2() };
    Some(NativeHeap {
        in_use_bytes: m.uordblks.saturating_add(m.hblkhd),
        free_bytes: m.fordblks,
    })
}

/// Not measured where the C allocator is not glibc's.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn native_heap() -> Option<NativeHeap> {
    None
}

/// Starts the process's heap trimmer, once (later calls do nothing): a
/// thread of its own, so a trim never runs on a stage's loop (it holds
/// glibc's arena locks while it walks them: RocksDB's and librdkafka's
/// allocations wait that long; the time each trim took is logged at debug).
pub fn start_trimming() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(HEAP_TRIM_INTERVAL_MS));
                trim_when_free_at_least(HEAP_TRIM_MIN_FREE_BYTES);
            });
        if let Err(e) = spawned {
            // Memory is then only measured, not trimmed: not worth failing for.
            tracing::warn!(error = %e, "the heap trimmer did not start");
        }
    });
}

/// Returns glibc's free memory to the system when it holds at least
/// `min_free_bytes` of it. Returns whether it trimmed.
pub fn trim_when_free_at_least(min_free_bytes: usize) -> bool {
    let Some(before) = native_heap().filter(|h| h.free_bytes >= min_free_bytes) else {
        return false;
    };
    let started = Instant::now();
    trim();
    debug!(
        free_bytes = before.free_bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "native heap trimmed"
    );
    true
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes a size and only releases free memory (the
    // top of each heap, and whole free pages inside them via madvise).
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_c_allocation_shows_in_use_until_freed() {
        const BLOCK_BYTES: usize = 4 * 1024 * 1024;
        let before = native_heap().unwrap();
        // SAFETY: a plain malloc/free pair of a block nothing else sees.
        let block = unsafe { libc::malloc(BLOCK_BYTES) };
        assert!(!block.is_null());
        let during = native_heap().unwrap();
        unsafe { libc::free(block) };
        let after = native_heap().unwrap();
        // Other test threads allocate too: compare with a margin well
        // under the block.
        assert!(
            during.in_use_bytes >= before.in_use_bytes + BLOCK_BYTES / 2,
            "{before:?} -> {during:?}"
        );
        assert!(
            after.in_use_bytes + BLOCK_BYTES / 2 <= during.in_use_bytes,
            "{during:?} -> {after:?}"
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_is_trimmed_only_beyond_the_threshold() {
        const BLOCKS: usize = 64;
        const BLOCK_BYTES: usize = 64 * 1024; // under the mmap threshold: arena chunks
                                              // Many small blocks freed leave free chunks in the arena (one kept
                                              // at the end stops glibc shrinking the heap top on free).
        let blocks: Vec<_> = (0..=BLOCKS)
            .map(|_| unsafe { libc::malloc(BLOCK_BYTES) })
            .collect();
        assert!(blocks.iter().all(|b| !b.is_null()));
        for b in blocks.iter().take(BLOCKS) {
            unsafe { libc::free(*b) };
        }
        let free = native_heap().unwrap().free_bytes;
        assert!(free >= BLOCKS * BLOCK_BYTES / 2, "{free}");
        assert!(!trim_when_free_at_least(usize::MAX), "never that much free");
        assert!(trim_when_free_at_least(BLOCKS * BLOCK_BYTES / 4));
        if let Some(last) = blocks.last() {
            unsafe { libc::free(*last) };
        }
    }
}
