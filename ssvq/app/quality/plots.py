"""Figures of a quality report: the metric against bits and against speedup
with their Pareto fronts, and SSVQ sign freezing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ssvq.app.quality.pareto import pareto_front


MARKERS = {"fp32": "*", "int8": "s", "int4": "D", "int3": "d", "vq": "o", "ssvq": "^",
           "faiss": "x", "diffq": "P", "cosvq": "v", "dkm": "<", "lr2vq": ">", "qsd": "h",
           "nas": "p"}
COLORS = {"fp32": "black", "int8": "tab:gray", "int4": "tab:brown", "int3": "tab:pink",
          "vq": "tab:blue", "ssvq": "tab:red", "faiss": "tab:green", "diffq": "tab:purple",
          "cosvq": "tab:olive", "dkm": "tab:cyan", "lr2vq": "tab:orange", "qsd": "darkblue",
          "nas": "darkgreen"}


def _scatter(ax, rows: list[dict], x: str, metric: str):
    """One marker per row with both values: shape and colour by method, filled
    when trained; one legend entry per (method, trained)."""
    seen = set()
    for r in rows:
        if r.get(metric) is None or r.get(x) is None:
            continue
        m = r["method"]
        label = ("fp32 (reference)" if m == "fp32" else
                 f"{m} ({'trained' if r['trained'] else 'post-training'})")
        mk = MARKERS.get(m, "o")
        filled = r["trained"] or mk in ("x", "+")          # line markers have no face
        style = ({"c": COLORS.get(m, "k")} if mk in ("x", "+") else
                 {"edgecolors": COLORS.get(m, "k"),
                  "c": COLORS.get(m, "k") if filled else "none"})
        ax.scatter(r[x], r[metric], marker=mk, s=60,
                   label=None if label in seen else label, zorder=3, **style)
        seen.add(label)


def plot_pareto(rows: list[dict], metric: str, path: Path, title: str, ylabel: str,
                ylim=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.2))
    _scatter(ax, rows, "bits_per_weight", metric)
    front = pareto_front(rows, metric)
    ax.step([rows[i]["bits_per_weight"] for i in front], [rows[i][metric] for i in front],
            where="post", color="gold", lw=2.5, alpha=0.8, zorder=2, label="Pareto front")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 1.5, 2, 3, 4, 8, 16, 32])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("bits per weight (codebook, codes, signs, row scales and padding included)")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    _finish(fig, ax, title, path, "lower right")


def _finish(fig, ax, title: str, path: Path, legend_loc: str):
    import matplotlib.pyplot as plt
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speedup(rows: list[dict], metric: str, path: Path, title: str, ylabel: str):
    """metric against speedup_int8 (rows with images), the Pareto front (more
    speedup and a higher metric are both better) as a step line: at a speedup,
    the best metric any row at least that fast reaches."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.2))
    _scatter(ax, rows, "speedup_int8", metric)
    front = pareto_front(rows, metric, x="speedup_int8", more_x_better=True)
    ax.step([rows[i]["speedup_int8"] for i in front], [rows[i][metric] for i in front],
            where="pre", color="gold", lw=2.5, alpha=0.8, zorder=2, label="Pareto front")
    ax.axvline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("whole-model speedup over int8 (cycles, cost model = RTL counters, "
                  "default build)")
    ax.set_ylabel(ylabel)
    vals = [r[metric] for r in rows if r.get(metric) is not None and r.get("speedup_int8")]
    if vals:
        ax.set_ylim(max(0.0, min(vals) - 0.02), min(1.005, max(vals) + 0.02))
    _finish(fig, ax, title, path, "lower left")


def freezing_summary(runs: dict[str, list[dict]], points: int = 400) -> dict:
    """Downsampled (progress, frozen fraction, flip rate) per run, for summary.json."""
    out = {}
    for label, log in runs.items():
        log = [r for r in log if "frozen_fraction" in r]
        step = max(1, len(log) // points)
        out[label] = [[r["progress"], r["frozen_fraction"], r["flip_rate"]]
                      for r in log[::step]]
    return out


def plot_freezing(runs: dict[str, list[dict]], path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for label, log in runs.items():
        log = [r for r in log if "frozen_fraction" in r]
        if not log:
            continue
        x = [r["progress"] for r in log]
        ff = np.array([r["frozen_fraction"] for r in log])
        keep = ff > 0
        a1.plot(np.asarray(x)[keep], ff[keep], label=label)
        fr = np.array([r["flip_rate"] for r in log])
        w = max(1, len(fr) // 50)
        sm = np.convolve(fr, np.ones(w) / w, mode="same")
        keep = sm > 0                         # log axis: steps with no flip at all left out
        a2.plot(np.asarray(x)[keep], sm[keep], label=label)
    a1.set_yscale("log")
    a1.set_ylabel("fraction of signs frozen")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    a2.set_yscale("log")
    a2.set_ylabel("sign flips per step / all signs\n(moving average)")
    a2.set_xlabel("training progress (fraction of steps / of the time budget)")
    a2.grid(alpha=0.3)
    a1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
