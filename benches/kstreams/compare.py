#!/usr/bin/env python3
"""Compare two dumps of finance.postings, posting by posting.

Input: two files, one record per line, "KEY<TAB>VALUE" where KEY is the Kafka
record key (meterline: ["<legal entity>","<subscription>"]) and VALUE the
posting JSON exactly as stored on the topic (what
`java -cp meterline-kstreams.jar dev.meterline.kstreams.Dump --topic T` prints).
A line without a tab is taken as a value with no key. Blank lines are skipped.

Postings are matched by idempotency_key. For each pair the record keys and
the value bytes are compared; when the bytes differ, the JSON values are
compared field by field (so the report says which fields differ).

  compare.py A.tsv B.tsv [--names meterline,kstreams] [--show N] [--json]

Exit 0 when both hold the same postings with byte-identical values and equal
keys, 1 otherwise, 2 on bad input (unparsable JSON, no idempotency_key, or the
same idempotency_key twice in one file with different values).
Python 3.11 standard library only.
"""
import argparse
import json
import sys
from collections import Counter


def load(path):
    postings = {}
    problems = []
    duplicates = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, sep, value = line.partition("\t")
            if not sep:
                key, value = "", line
            try:
                doc = json.loads(value)
                ik = doc["idempotency_key"]
            except (ValueError, KeyError, TypeError) as e:
                problems.append(f"{path}:{n}: not a posting: {e}")
                continue
            if ik in postings:
                if postings[ik][1] != value:
                    problems.append(f"{path}:{n}: idempotency_key {ik} twice with different values")
                duplicates += 1
                continue
            postings[ik] = (key, value, doc)
    return postings, duplicates, problems


def diff_fields(a, b, prefix=""):
    """Paths of the leaves that differ between two JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                out.append(prefix + k)
            else:
                out += diff_fields(a[k], b[k], prefix + k + ".")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff_fields(x, y, f"{prefix}{i}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


def kinds(postings):
    return Counter(f"{d['posting_type']}/{d['kind']}" for _, _, d in postings.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--names", default="A,B", help="labels of the two files, comma-separated")
    ap.add_argument("--show", type=int, default=5, help="examples shown per kind of difference")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args()
    na, nb = (args.names.split(",") + ["A", "B"])[:2]

    pa, dupa, proba = load(args.a)
    pb, dupb, probb = load(args.b)
    only_a = sorted(set(pa) - set(pb))
    only_b = sorted(set(pb) - set(pa))
    common = sorted(set(pa) & set(pb))
    identical = key_diff = 0
    value_diff = []
    field_counts = Counter()
    for ik in common:
        ka, va, da = pa[ik]
        kb, vb, db = pb[ik]
        if ka != kb:
            key_diff += 1
        if va == vb:
            identical += 1
        else:
            fields = diff_fields(da, db)
            field_counts.update(fields or ["(formatting only: same JSON, different bytes)"])
            value_diff.append((ik, fields))

    summary = {
        na: {"postings": len(pa), "duplicate_lines": dupa, "kinds": dict(sorted(kinds(pa).items()))},
        nb: {"postings": len(pb), "duplicate_lines": dupb, "kinds": dict(sorted(kinds(pb).items()))},
        "common": len(common),
        f"only_in_{na}": len(only_a),
        f"only_in_{nb}": len(only_b),
        "byte_identical_values": identical,
        "different_values": len(value_diff),
        "different_record_keys": key_diff,
        "differing_fields": dict(field_counts.most_common()),
        "problems": proba + probb,
    }
    ok = not (only_a or only_b or value_diff or key_diff or proba or probb)
    summary["verdict"] = "identical" if ok else "different"
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{na}: {len(pa)} postings ({dupa} duplicate lines) from {args.a}")
        print(f"{nb}: {len(pb)} postings ({dupb} duplicate lines) from {args.b}")
        for k in sorted(set(kinds(pa)) | set(kinds(pb))):
            print(f"  {k:32} {kinds(pa)[k]:8} {kinds(pb)[k]:8}")
        print(f"matched by idempotency_key: {len(common)}; only in {na}: {len(only_a)}; only in {nb}: {len(only_b)}")
        print(f"byte-identical values: {identical}; different values: {len(value_diff)}; different record keys: {key_diff}")
        for f, c in field_counts.most_common():
            print(f"  field {f}: differs in {c}")
        for ik in only_a[: args.show]:
            print(f"  only in {na}: {pa[ik][1][:300]}")
        for ik in only_b[: args.show]:
            print(f"  only in {nb}: {pb[ik][1][:300]}")
        for ik, fields in value_diff[: args.show]:
            print(f"  {ik}: {', '.join(fields)}")
            print(f"    {na}: {pa[ik][1][:400]}")
            print(f"    {nb}: {pb[ik][1][:400]}")
        for p in proba + probb:
            print(f"  problem: {p}")
        print(f"verdict: {summary['verdict']}")
    if proba or probb:
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
