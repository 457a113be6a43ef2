"""Plots of the latency runs of `bench e2e`: deliveries per second and the p50/p99 latency
per second, engine vs Restate, one PNG per rate. Usage: plot.py <results dir> <image dir>."""

import csv
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            rows.append((float(row["arrival_s"]), float(row["latency_ms"])))
    return rows


def per_second(rows):
    buckets = {}
    for arrival, latency in rows:
        buckets.setdefault(int(arrival), []).append(latency)
    seconds = sorted(buckets)
    def pct(values, q):
        values = sorted(values)
        return values[max(0, math.ceil(q * len(values)) - 1)]
    return (
        seconds,
        [len(buckets[s]) for s in seconds],
        [pct(buckets[s], 0.50) for s in seconds],
        [pct(buckets[s], 0.99) for s in seconds],
    )


def main():
    results, images = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    images.mkdir(parents=True, exist_ok=True)
    rates = sorted({int(p.stem.split("-")[-1]) for p in results.glob("latency-*-*.csv")})
    for rate in rates:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for system, colour in (("engine", "tab:blue"), ("restate", "tab:orange")):
            path = results / f"latency-{system}-{rate}.csv"
            if not path.exists():
                continue
            seconds, counts, p50, p99 = per_second(load(path))
            label = "engine" if system == "engine" else "Restate 1.7.12"
            top.plot(seconds, counts, color=colour, label=label)
            bottom.plot(seconds, p50, color=colour, linestyle="--", label=f"{label} p50")
            bottom.plot(seconds, p99, color=colour, label=f"{label} p99")
        top.set_ylabel("deliveries / s")
        top.set_title(f"Produced at {rate} records/s: throughput and latency over time")
        top.legend()
        bottom.set_ylabel("produce → handler (ms)")
        bottom.set_xlabel("seconds since the first delivery")
        bottom.set_yscale("log")
        bottom.legend()
        fig.tight_layout()
        out = images / f"bench-latency-{rate}.png"
        fig.savefig(out, dpi=100)
        print(f"plot: {out}")


if __name__ == "__main__":
    main()
