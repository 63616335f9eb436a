#!/usr/bin/env python3
"""Sum CubeCL's kernel profile log (`CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=FILE`) per kernel.

    python tools/cubecl_profile.py FILE [--top 30]

Each logged line `| 1.23ms | Name_hash` is one kernel launch, timed on the device. Prints the
kernels by total time (hash dropped), launches, and the sum over all launches.
"""
import argparse
import collections
import re

UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
LINE = re.compile(r"^\|\s*([0-9.]+)\s*(s|ms|µs|us|ns)\s*\|\s*(.+?)\s*$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    total = collections.Counter()
    count = collections.Counter()
    with open(a.log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            name = re.sub(r"_[0-9a-f]{6,}\b", "", m.group(3))
            total[name] += float(m.group(1)) * UNITS[m.group(2)]
            count[name] += 1
    s = sum(total.values())
    print(f"{sum(count.values())} launches, {s:.3f} s on the device")
    for name, t in total.most_common(a.top):
        print(f"{t:9.4f} s {100 * t / max(s, 1e-12):5.1f}% {count[name]:6d}x  {name}")


if __name__ == "__main__":
    main()
