#!/usr/bin/env python3
"""Markdown table of finished sigmatune jobs, from their report.json files (docs/results.md).

    python3 tools/results_table.py runs/smollm2-*/report.json

One row per job: method, rank, steps, final training loss, each eval set before -> after, the
training throughput and the wall time of every phase. Standard library only.
"""
import json
import sys


def fmt(metric, value):
    return f"{100 * value:.1f}%" if metric == "exact_match" else f"{value:.3f}"


def main(paths):
    reports = [json.load(open(p)) for p in paths]
    if not reports:
        sys.exit("results_table: no report.json given")
    sets = [(e["name"], e["role"], e["metric"]) for e in reports[0]["eval"]]
    head = ["job", "method", "r", "steps", "final loss"]
    for name, role, metric in sets:
        head.append(f"{name} ({role}, {metric.replace('_', ' ')}) before → after")
    head += ["train tok/s", "wall time (s)", "device"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in reports:
        row = [r["job"], r["method"], str(r["rank"]), str(r["train"]["steps"]), f"{r['train']['final_loss']:.4f}"]
        by_name = {e["name"]: e for e in r["eval"]}
        for name, _, metric in sets:
            e = by_name.get(name)
            row.append("-" if e is None else f"{fmt(metric, e.get('before', float('nan')))} → {fmt(metric, e['after'])}")
        row.append(f"{r['train']['tokens_per_second']:.0f}")
        times = r["times"]
        row.append(f"{sum(times.values()):.0f} (" + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + ")")
        row.append(r["device"])
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
