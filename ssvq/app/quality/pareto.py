"""The report's decisions: which rows are on the Pareto front (bits against a
metric) and which of two rows wins."""
from __future__ import annotations


def pareto_front(rows: list[dict], metric: str) -> list[int]:
    """Indices of rows not dominated (fewer-or-equal bits and higher-or-equal
    metric, one of them strictly)."""
    idx = [i for i, r in enumerate(rows) if r.get(metric) is not None]
    front = []
    for i in idx:
        b, m = rows[i]["bits_per_weight"], rows[i][metric]
        dom = any(rows[j]["bits_per_weight"] <= b and rows[j][metric] >= m
                  and (rows[j]["bits_per_weight"] < b or rows[j][metric] > m) for j in idx)
        if not dom:
            front.append(i)
    return sorted(front, key=lambda i: rows[i]["bits_per_weight"])


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
