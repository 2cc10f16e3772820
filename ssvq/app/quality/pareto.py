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


# bits/weight bands of the method comparison: "about 2" and "about 3" bits, and more
BANDS = (("<= 2.5 bits/weight", 0.0, 2.5), ("2.5-3.5 bits/weight", 2.5, 3.5),
         ("> 3.5 bits/weight", 3.5, 99.0))


def _name(r: dict) -> str:
    c = r.get("config") or ""
    return r["method"] if c in ("", r["method"]) else f"{r['method']} {c}"


def band_verdicts(rows: list[dict], metric: str = "mean_cosine") -> list[str]:
    """The report's sentences on the trained rows: per bits band, the winner by
    `metric`, its margin over the runner-up, and where the best SSVQ row stands
    (the rows above it, by how much); then the best integer-path fidelity at
    each speedup over int8 (>= 3.5x, >= 2.5x)."""
    trained = [r for r in rows if r.get("trained") and r.get(metric) is not None]
    out = []
    for label, lo, hi in BANDS:
        band = sorted((r for r in trained if lo < r["bits_per_weight"] <= hi),
                      key=lambda r: -r[metric])
        if not band:
            continue
        w = band[0]
        s = (f"- **{label}**: {_name(w)} wins ({w['bits_per_weight']:.2f} b/w, "
             f"{metric} {w[metric]:.4f}")
        s += (f", {w[metric] - band[1][metric]:+.4f} over {_name(band[1])} at "
              f"{band[1]['bits_per_weight']:.2f} b/w)" if len(band) > 1 else ", alone)")
        ss = [r for r in band if r["method"] == "ssvq"]
        if ss and ss[0] is not w:
            above = [r for r in band if r[metric] > ss[0][metric]]
            s += (f"; SSVQ ({_name(ss[0])}, {ss[0][metric]:.4f}) loses here to "
                  + ", ".join(f"{_name(r)} by {r[metric] - ss[0][metric]:.4f}" for r in above))
        elif not ss:
            s += "; no SSVQ row in this band"
        out.append(s + ".")
    for lo in (3.5, 2.5):
        fast = [r for r in trained if (r.get("speedup_int8") or 0) >= lo
                and r.get("int_mean_cosine") is not None]
        if fast:
            b = max(fast, key=lambda r: r["int_mean_cosine"])
            out.append(f"- **At >= {lo:g}x over int8**: best integer-path fidelity "
                       f"{_name(b)}, int_mean_cosine {b['int_mean_cosine']:.4f} at "
                       f"x{b['speedup_int8']:.2f}.")
    return out
