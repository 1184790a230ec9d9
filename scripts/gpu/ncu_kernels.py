#!/usr/bin/env python3
"""Per-kernel device time from an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum ...).

Sums gpu__time_duration by kernel name (template arguments stripped unless --full), skips names matching
--skip (default: the dummy-weight fill), and prints the top kernels with their share, calls and us/call.
Usage: ncu --csv --metrics gpu__time_duration.sum <cmd> > k.csv; ncu_kernels.py k.csv [--top 25] [--full]
"""
import argparse
import csv
import re
import sys
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--skip", default="fill_random")
    ap.add_argument("--full", action="store_true", help="keep template arguments in names")
    a = ap.parse_args()
    tot, calls = defaultdict(float), defaultdict(int)
    with open(a.csv, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # drop ncu's own log lines
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"]
        if a.skip and re.search(a.skip, name):
            continue
        if not a.full:
            name = re.sub(r"<.*", "", name.split("(")[0])
        v = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        v *= {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(unit, 1e-3)
        tot[name] += v
        calls[name] += 1
    total = sum(tot.values())
    print(f"{sum(calls.values())} kernels, {total / 1e3:.3f} ms of kernel time (no gaps)")
    for name, t in sorted(tot.items(), key=lambda x: -x[1])[: a.top]:
        print(f"  {name[:60]:60s} {t / 1e3:9.3f} ms {100 * t / total:5.1f}% {calls[name]:6d} calls {t / calls[name]:8.2f} us/call")


if __name__ == "__main__":
    sys.exit(main())
