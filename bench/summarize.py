"""Prints a markdown table (median, IQR, rounds) from a pytest-benchmark JSON file, grouped by benchmark group.

Usage: python bench/summarize.py bench.json
"""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    info = data.get("machine_info", {})
    print(f"machine: {info.get('node', '?')} {info.get('cpu', {}).get('brand_raw', '')}; "
          f"date {data.get('datetime', '?')}")
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench.get("group") or "ungrouped"].append(bench)
    for group, benches in sorted(groups.items()):
        print(f"\n### {group}\n")
        print("| benchmark | median (ms) | IQR (ms) | rounds | extra |")
        print("|---|---|---|---|---|")
        fastest = min(b["stats"]["median"] for b in benches)
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            s = b["stats"]
            extra = ", ".join(f"{k}={v}" for k, v in sorted(b.get("extra_info", {}).items()))
            ratio = s["median"] / fastest
            print(f"| {b['name']} | {s['median'] * 1e3:.3f} ({ratio:.2f}x) | {s['iqr'] * 1e3:.3f} | {s['rounds']} | {extra} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
