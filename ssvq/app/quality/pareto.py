"""The report's decisions: which rows are on the Pareto front (bits against a
metric) and which of two rows wins."""
from __future__ import annotations


def pareto_front(rows: list[dict], metric: str, x: str = "bits_per_weight",
                 more_x_better: bool = False) -> list[int]:
    """Indices of rows not dominated (x no worse and metric higher-or-equal, one
    of them strictly), in increasing x. x is bits/weight (fewer is better) by
    default; more_x_better for a speedup. Rows without x or metric are left out."""
    sign = -1.0 if more_x_better else 1.0
    idx = [i for i, r in enumerate(rows) if r.get(metric) is not None and r.get(x) is not None]
    front = []
    for i in idx:
        b, m = sign * rows[i][x], rows[i][metric]
        dom = any(sign * rows[j][x] <= b and rows[j][metric] >= m
                  and (sign * rows[j][x] < b or rows[j][metric] > m) for j in idx)
        if not dom:
            front.append(i)
    return sorted(front, key=lambda i: rows[i][x])


FIDELITY = ("mean_cosine", "min_cosine", "pearson")


def verdict(ssvq: dict, other: dict, metrics=FIDELITY) -> tuple[str, list[str]]:
    """Which row wins: SSVQ only if better on every metric, the other row
    only if SSVQ is better on none, else mixed. Also the metrics SSVQ wins."""
    wins = [m for m in metrics if ssvq[m] > other[m]]
    name = other.get("config") or other["method"]
    if all(ssvq[m] == other[m] for m in metrics):
        return "a tie", wins
    return ("SSVQ wins" if len(wins) == len(metrics) else
            f"{name} wins" if not wins else "mixed"), wins
