"""Prints the comparison table of a pytest-benchmark JSON file: per benchmark group the variants side by side.

Usage: python bench/summarize.py bench.json

Columns per variant (extra_info["variant"], else the test's parameter id): median and IQR (ms), rounds, the
speed-up over the group's ``eager`` variant and over its ``compile`` variant (their median / this median;
"-" where the group has none), the fraction of the roofline floor reached (extra_info["floor_us"] / median,
GPU benchmarks only) and the remaining extra_info.
"""

import json
import sys
from collections import defaultdict

BASELINES = ("eager", "compile")
SHOWN_APART = {"variant", "floor_us"}


def variant_name(bench: dict) -> str:
    """The variant a benchmark measures: extra_info["variant"], else its parameter id, else its name."""
    variant = bench.get("extra_info", {}).get("variant")
    if variant:
        return str(variant)
    return bench.get("param") or bench["name"]


def _speedup(baseline_median, median) -> str:
    return "-" if baseline_median is None else f"{baseline_median / median:.2f}x"


def group_rows(benches: list) -> list:
    """Table rows [variant, median ms, IQR ms, rounds, vs eager, vs compile, floor fraction, extra], fastest first."""
    medians = {variant_name(b): b["stats"]["median"] for b in benches}
    baseline = {name: medians.get(name) for name in BASELINES}
    rows = []
    for b in sorted(benches, key=lambda b: b["stats"]["median"]):
        s, info = b["stats"], b.get("extra_info", {})
        floor = info.get("floor_us")
        floor_fraction = "-" if floor is None else f"{floor * 1e-6 / s['median']:.1%}"
        extra = ", ".join(f"{k}={v}" for k, v in sorted(info.items()) if k not in SHOWN_APART and v is not None)
        rows.append(
            [
                variant_name(b),
                f"{s['median'] * 1e3:.3f}",
                f"{s['iqr'] * 1e3:.3f}",
                str(s["rounds"]),
                _speedup(baseline["eager"], s["median"]),
                _speedup(baseline["compile"], s["median"]),
                floor_fraction,
                extra,
            ]
        )
    return rows


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    info = data.get("machine_info", {})
    print(
        f"machine: {info.get('node', '?')} {info.get('cpu', {}).get('brand_raw', '')}; date {data.get('datetime', '?')}"
    )
    timed = [b for b in data["benchmarks"] if b.get("stats")]
    if not timed:
        print("no timed benchmarks in this file (was it written with --benchmark-disable?)")
        return
    groups = defaultdict(list)
    for bench in timed:
        groups[bench.get("group") or "ungrouped"].append(bench)
    for group, benches in sorted(groups.items()):
        print(f"\n### {group}\n")
        print("| variant | median (ms) | IQR (ms) | rounds | vs eager | vs compile | of floor | extra |")
        print("|---|---|---|---|---|---|---|---|")
        for row in group_rows(benches):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
