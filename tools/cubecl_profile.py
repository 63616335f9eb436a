#!/usr/bin/env python3
"""Sum CubeCL's kernel profile log (`CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=FILE`) per kernel.

    python tools/cubecl_profile.py FILE [--top 30]
    python tools/cubecl_profile.py FILE --last-of N     # launches of the last of N model calls

Each logged line `| 1.23ms | Name_hash` is one kernel launch, timed on the device. Prints the
kernels by total time (hash dropped), launches, and the sum over all launches. CubeCL appends
to FILE: remove it before each run, or the counts cover the runs before it too.

`--last-of N` counts the launches of the last model call instead, for a log of N calls with the
same matmuls (`imagen bench --runs N-1`: a warm-up call, then the timed ones): the last call
starts after the last matmul of the call before it (and any trailing launches of that call up
to the bench's next input, a PRNG launch), so weight initialisation is left out.
"""
import argparse
import collections
import re

UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
LINE = re.compile(r"^\|\s*([0-9.]+)\s*(s|ms|µs|us|ns)\s*\|\s*(.+?)\s*$")


def launches(path):
    """(name, seconds) per launch, in order; names without hashes, matmuls as MATMUL."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            name = re.sub(r"_[0-9a-f]{6,}\b", "", m.group(3))
            if name.startswith("MatmulEntry"):
                name = "MATMUL (cubek)"
            out.append((name, float(m.group(1)) * UNITS[m.group(2)]))
    return out


def last_call(seq, calls):
    mm = [i for i, (n, _) in enumerate(seq) if n.startswith("MATMUL")]
    per = len(mm) // calls
    start = mm[-per - 1] + 1
    gap = seq[start:mm[-per]]
    skip = next((i for i, (n, _) in enumerate(gap) if n.startswith("PrngKernel")), 0)
    return seq[start + skip:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--last-of", type=int, default=0, metavar="N")
    a = ap.parse_args()
    seq = launches(a.log)
    if a.last_of:
        seq = last_call(seq, a.last_of)
    total = collections.Counter()
    count = collections.Counter()
    for name, t in seq:
        total[name] += t
        count[name] += 1
    s = sum(total.values())
    what = "launches in the last call (with its input)" if a.last_of else "launches"
    print(f"{sum(count.values())} {what}, {s:.3f} s on the device")
    for name, t in total.most_common(a.top):
        print(f"{t:9.4f} s {100 * t / max(s, 1e-12):5.1f}% {count[name]:6d}x  {name}")


if __name__ == "__main__":
    main()
