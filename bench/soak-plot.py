#!/usr/bin/env python3
"""Plots Redis used_memory against time from the CSVs of bench/soak-redis.sh runs.

    python3 bench/soak-plot.py OUT.png LABEL=run1.csv LABEL=run2.csv …

Needs matplotlib (pip install matplotlib)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out, runs = sys.argv[1], sys.argv[2:]
fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
for run in runs:
    label, path = run.split("=", 1)
    rows = list(csv.DictReader(open(path)))
    t = [float(r["seconds"]) for r in rows]
    mib = [int(r["used_memory_bytes"]) / 2**20 for r in rows]
    ax.plot(t, mib, label=label)
ax.set_xlabel("seconds since the first job")
ax.set_ylabel("Redis used_memory (MiB)")
ax.set_title("200,000 no-op jobs through Redis")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out)
