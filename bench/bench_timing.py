"""Shared benchmark settings and throughput figures from a pytest-benchmark fixture, for extra_info.

UDM_FAST_BENCH_SMALL=1 shrinks every suite's shapes to a smoke size (CI runs each benchmark body once
with ``--benchmark-disable`` at these sizes): the code paths of the real sizes, not their timings.
"""

from __future__ import annotations

import os
from typing import Optional

SMALL = os.environ.get("UDM_FAST_BENCH_SMALL", "0") == "1"


def rate(benchmark, amount: float, digits: int, statistic: str = "mean") -> Optional[float]:
    """``amount`` per second at the rounds' ``statistic`` time, rounded; None when timing is off
    (``--benchmark-disable`` runs each benchmark once as a plain test and keeps no statistics)."""
    if benchmark.stats is None:
        return None
    return round(amount / getattr(benchmark.stats.stats, statistic), digits)
