"""The benchmark suites run as tests: every torch.compile variant of the layer suite in one process.

The layer benchmarks compile the same reference functions for many shapes and dtypes; each case must
get its own compile budget (bench/NOTES.md), which only shows when they all run in one process.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 layers x 3 levels x 2 dtypes x 2 phases, each with a compile variant under UDM_FAST_BENCH_LAYERS=full
COMPILE_CASES = 2 * 3 * 2 * 2


def _run_bench(tmp_path, args, **env):
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *args,
            "--benchmark-disable",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "UDM_FAST_BENCH_SMALL": "1", **env},
    )
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    cases = list(ET.parse(report).getroot().iter("testcase"))
    return result, cases


def test_every_layer_compile_variant_runs_in_one_process(tmp_path):
    result, cases = _run_bench(
        tmp_path,
        ["bench/test_bench_layers.py", "-k", "compile"],
        UDM_FAST_BENCH_LAYERS="full",
        UDM_FAST_BENCH_COMPILE_BACKEND="eager",
    )
    names = [case.get("name") for case in cases]
    failed = [
        case.get("name")
        for case in cases
        if case.find("failure") is not None or case.find("error") is not None or case.find("skipped") is not None
    ]
    assert len(cases) == COMPILE_CASES and all(name.endswith("-compile]") for name in names), names
    assert not failed, f"{failed}\n{result.stdout[-4000:]}"
    assert result.returncode == 0


def _summarize_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("summarize", os.path.join(ROOT, "bench", "summarize.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(variant, median, **extra):
    return {
        "name": f"test_layer[{variant}]",
        "group": "SFT-L1",
        "param": variant,
        "stats": {"median": median, "iqr": median / 10, "rounds": 5},
        "extra_info": {"variant": variant, **extra},
    }


def test_summarize_puts_variants_side_by_side_with_speedups(tmp_path, capsys):
    summarize = _summarize_module()
    rows = summarize.group_rows([_bench("eager", 4e-3), _bench("compile", 2e-3), _bench("fused", 1e-3, floor_us=250.0)])
    by_variant = {row[0]: row for row in rows}
    assert [row[0] for row in rows] == ["fused", "compile", "eager"]
    assert by_variant["fused"][4:7] == ["4.00x", "2.00x", "25.0%"]
    assert by_variant["eager"][4:7] == ["1.00x", "0.50x", "-"]
    no_baselines = summarize.group_rows([_bench("bf16", 1e-3)])
    assert no_baselines[0][4:6] == ["-", "-"]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [_bench("eager", 4e-3), _bench("fused", 1e-3)]}))
    summarize.main(str(path))
    out = capsys.readouterr().out
    assert "### SFT-L1" in out and "| fused | 1.000 | 0.100 | 5 | 4.00x | - | - |" in out
