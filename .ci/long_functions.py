#!/usr/bin/env python3
"""List non-test Rust functions in src/ whose body is over LIMIT lines (100).

Usage: .ci/long_functions.py [src] [limit]; exits 1 when one has no reason.

Skips `#[cfg(test)]` items (test modules), files named tests.rs or under
tests/ folders, and functions carrying a `// long:` reason comment in the 4
lines above the signature (reported separately)."""
import os, re, sys

LIMIT = int(sys.argv[2]) if len(sys.argv) > 2 else 100
ROOT = sys.argv[1] if len(sys.argv) > 1 else "src"
FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"[^"]*"\s+)?fn\s+(\w+)')

def strip(line):
    # drop string literals and line comments (crude but fine for brace counting)
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    i = line.find('//')
    return line if i < 0 else line[:i]

def scan(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    skip_until = -1
    i = 0
    n = len(lines)
    while i < n:
        l = lines[i]
        s = l.strip()
        # skip test modules
        if s.startswith("#[cfg(test)]"):
            # skip the next item fully
            j = i + 1
            while j < n and (lines[j].strip().startswith("#[") or not lines[j].strip()):
                j += 1
            depth, started = 0, False
            while j < n:
                t = strip(lines[j])
                depth += t.count("{") - t.count("}")
                if "{" in t: started = True
                if started and depth <= 0: break
                if not started and t.rstrip().endswith(";"): break
                j += 1
            i = j + 1
            continue
        m = FN.match(l)
        if m:
            name = m.group(7)
            # find body start
            j, depth, started = i, 0, False
            while j < n:
                t = strip(lines[j])
                if not started and t.rstrip().endswith(";") and "{" not in t:
                    break  # trait method declaration
                depth += t.count("{") - t.count("}")
                if "{" in t: started = True
                if started and depth <= 0: break
                j += 1
            if started:
                # body lines: between the line with the opening brace and the closing one
                k = i
                while "{" not in strip(lines[k]): k += 1
                body = j - k - 1
                reason = any("// long:" in lines[x] for x in range(max(0, i - 4), i))
                if body > LIMIT:
                    out.append((body, path, i + 1, name, reason))
            # do not skip: nested fns are scanned too
        i += 1
    return out

res = []
for d, _, fs in os.walk(ROOT):
    if "/tests" in d or d.endswith("tests"):
        continue
    for f in fs:
        if f.endswith(".rs") and f != "tests.rs":
            res += scan(os.path.join(d, f))
res.sort(reverse=True)
bad = [r for r in res if not r[4]]
for body, path, line, name, reason in res:
    print(f"{body:5d}  {path}:{line}  {name}{'  (reason given)' if reason else ''}")
print(f"{len(bad)} function(s) over {LIMIT} lines without a reason")
sys.exit(1 if bad else 0)
