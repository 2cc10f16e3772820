"""Figures of a quality report: the Pareto plot and SSVQ sign freezing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ssvq.app.quality.pareto import pareto_front


MARKERS = {"fp32": "*", "int8": "s", "int4": "D", "int3": "d", "vq": "o", "ssvq": "^",
           "faiss": "x", "diffq": "P"}
COLORS = {"fp32": "black", "int8": "tab:gray", "int4": "tab:brown", "int3": "tab:pink",
          "vq": "tab:blue", "ssvq": "tab:red", "faiss": "tab:green", "diffq": "tab:purple"}


def plot_pareto(rows: list[dict], metric: str, path: Path, title: str, ylabel: str,
                ylim=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.2))
    seen = set()
    for r in rows:
        if r.get(metric) is None:
            continue
        m = r["method"]
        label = ("fp32 (reference)" if m == "fp32" else
                 f"{m} ({'trained' if r['trained'] else 'post-training'})")
        mk = MARKERS.get(m, "o")
        filled = r["trained"] or mk in ("x", "+")          # line markers have no face
        style = ({"c": COLORS.get(m, "k")} if mk in ("x", "+") else
                 {"edgecolors": COLORS.get(m, "k"),
                  "c": COLORS.get(m, "k") if filled else "none"})
        ax.scatter(r["bits_per_weight"], r[metric], marker=mk, s=60,
                   label=None if label in seen else label, zorder=3, **style)
        seen.add(label)
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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
