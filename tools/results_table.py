"""Markdown tables from bench_accuracy.py --log files: one row per method x mode x reweight x
allocation, one column per target ratio, cells 'top-1 (realised ratio)'.

    python tools/results_table.py .bench/methods_lenet_mnist.jsonl [more.jsonl ...]
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict


def main(paths: list) -> None:
    runs = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    targets = sorted({r["target"] for r in runs})
    rows: OrderedDict = OrderedDict()
    for r in runs:
        allocation = "ranking" if r["method"] == "random-global" else r.get("allocation", "uniform")
        key = (r["model"], r["method"], r["mode"], "yes" if r["reweight"] else "no", allocation, r.get("extra", ""))
        rows.setdefault(key, {})[r["target"]] = r
    extra = any(k[5] for k in rows)
    head = ["model", "method", "mode", "reweight", "allocation"] + (["extra"] if extra else [])
    print("| " + " | ".join(head + [f"{t:g}x: top-1 (ratio, s)" for t in targets]) + " |")
    print("|" + "---|" * (len(head) + len(targets)))
    for key, cells in rows.items():
        values = [f"{c['top1']:.4f} ({c['ratio']:.2f}, {c['seconds']:.0f})" if (c := cells.get(t)) else ""
                  for t in targets]
        print("| " + " | ".join(list(key[:5]) + ([key[5]] if extra else []) + values) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
