"""Throughput figures from a pytest-benchmark fixture, for the benchmarks' extra_info."""
from __future__ import annotations

from typing import Optional


def rate(benchmark, amount: float, digits: int, statistic: str = "mean") -> Optional[float]:
    """``amount`` per second at the rounds' ``statistic`` time, rounded; None when timing is off
    (``--benchmark-disable`` runs each benchmark once as a plain test and keeps no statistics)."""
    if benchmark.stats is None:
        return None
    return round(amount / getattr(benchmark.stats.stats, statistic), digits)
