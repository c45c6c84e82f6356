#!/usr/bin/env python3
"""Where each stage thread's samples go, from `perf script -F comm,ip,sym`
output (perf record --call-graph dwarf) on stdin: per thread, the share of
samples by phase (the innermost meterline frame that names one) and by kind
(the leaf function's library). Shares are within one run, so they compare
between builds even when the machine's speed drifts (deploy/local/profile).
Standard library only."""

import collections
import re
import sys

# (phase, pattern on a frame's function), tried from the leaf outward; the
# first frame matching any pattern decides, in this order of patterns.
PHASES = [
    ("lineage", r"meterline::lineage::"),
    ("counters and metrics", r"prometheus::|meterline::internal_events::|meterline::metrics"),
    ("produce: changelog", r"send_changelogs"),
    ("produce: outputs", r"Engine<P>::send\b|send_outputs"),
    ("store: write at commit", r"PartitionStores::write|apply_committed|Backend>::apply"),
    ("store: read", r"PartitionStores::get|PartitionStores::scan|Backend>::get|get_counter"),
    ("decode (serde)", r"from_json_slice|from_slice|Deserialize|deserialize"),
    ("encode (serde)", r"to_json_bytes|to_vec|Serialize|serialize"),
    ("transaction: commit, offsets", r"commit_transaction|send_offsets|begin_transaction|Engine<P>::commit"),
    ("consume: poll", r"take_polled|BaseConsumer.*poll|rd_kafka_consumer_poll|rd_kafka_event"),
    ("stage: own logic", r"Processor>::process|Processor>::punctuate|meterline::stages::"),
    ("runtime: other", r"meterline::runtime::"),
]
# The "produce" phases: a frame of runtime::produce is attributed to its caller.
PRODUCE = re.compile(r"meterline::runtime::produce")

KINDS = [
    ("allocation", r"\bmi_|_mi_|malloc|_int_free|cfree|\bfree\b|alloc::alloc|realloc|tcache|unlink_chunk|no_alloc_shim"),
    ("copies, Vec growth", r"memcpy|memmove|memset|append_elements|raw_vec|ptr::write|copy_nonoverlapping|MaybeUninit"),
    ("serde_json", r"serde_json::|serde_core::|serde::|ryu::|itoa::"),
    ("utf-8 checks", r"utf8"),
    ("rocksdb", r"rocksdb|crc32c|CRC32|std::__uniq_ptr"),
    ("librdkafka", r"^rd_|rdkafka"),
    ("locks, atomics", r"pthread_mutex|pthread_rwlock|lll_|futex|atomic|Arc<T,A> as core::clone"),
    ("clock", r"clock_gettime|gettimeofday"),
    ("kernel", r"^0xffff|_raw_spin|irqentry|finish_task_switch|syscall|page_fault|folio|softirq|\[unknown\]"),
    ("memcmp, BTreeMap, hashing", r"memcmp|btree|BTree|SliceOrd|Hasher|cmp::"),
    ("hex", r"^hex::"),
    ("sha2", r"sha2::|sha256"),
    ("rust_decimal", r"rust_decimal"),
    ("chrono", r"chrono::"),
    ("meterline", r"meterline::"),
]
# Threads with fewer samples are left out of the tables (post and invoice
# idle through a throughput run).
THREAD_MIN_SAMPLES = 20
# How many frames from the leaf the kind is looked for in (inlined helpers
# such as Result::map are skipped this way).
KIND_FRAMES = 3


def samples(lines):
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            continue
        if not line[0].isspace():
            if comm is not None:
                yield comm, frames
            comm, frames = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "?")
    if comm is not None:
        yield comm, frames


def phase(frames):
    for name in frames:
        if PRODUCE.search(name):
            continue
        for label, rx in PHASES:
            if re.search(rx, name):
                return label
    return "no meterline frame (stack cut)"


def kind(frames):
    for name in frames[:KIND_FRAMES]:
        for label, rx in KINDS:
            if re.search(rx, name):
                return label
    return "other"


def table(title, counts, totals, threads):
    labels = sorted(
        {k for c in counts.values() for k in c},
        key=lambda k: -sum(counts[t][k] for t in threads),
    )
    print(f"\n{title} (% of each thread's samples)\n")
    print("| " + " | ".join(["", *threads]) + " |")
    print("|---" + "|---:" * len(threads) + "|")
    for label in labels:
        cells = [f"{100.0 * counts[t][label] / totals[t]:.1f}" for t in threads]
        print("| " + " | ".join([label, *cells]) + " |")


def main():
    by_phase = collections.defaultdict(collections.Counter)
    by_kind = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    everything = collections.Counter()
    for comm, frames in samples(sys.stdin):
        everything[comm] += 1
        if not comm.startswith("stage-"):
            continue
        totals[comm] += 1
        by_phase[comm][phase(frames)] += 1
        by_kind[comm][kind(frames)] += 1
    if not totals:
        sys.exit("profile-phases: no stage-* thread in the samples")
    threads = [t for t in sorted(totals, key=lambda t: -totals[t]) if totals[t] >= THREAD_MIN_SAMPLES]
    n = sum(everything.values())
    print(f"samples: {n}; by thread (% of all):")
    for comm, c in everything.most_common(12):
        print(f"  {comm}: {100.0 * c / n:.1f}")
    table("By phase", by_phase, totals, threads)
    table("By kind (the sampled function)", by_kind, totals, threads)


if __name__ == "__main__":
    main()
