"""`ssvq report`: cost model, speedup and per-stream access report.

Reads a compressed image set (and optionally the same model's int8 images and
the folders `ssvq sim` wrote for either), charges every layer with the cost
model (`sim.cost`), cross-checks the cost model against the RTL's counters for
every simulated layer, and writes `summary.json`, `report.md` and PNG plots.

The output folder is built in a temporary sibling and moved into place only
once everything is written, so a failure leaves no half report.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from compress.image import read_images
from hw.config import AccelConfig

from ssvq.files import atomic_dir
from sim.cost import STREAMS, LayerCost, compare

PLOTS = {
    "speedup": "speedup_per_layer.png",
    "bits": "bits_per_stream.png",
    "cycles": "model_vs_rtl_cycles.png",
}
BASELINE = "int8"


def _user_error(msg: str) -> Exception:
    from ssvq.cli import UserError
    return UserError(msg)


# ------------------------------------------------------------------ sim results
def _index_results(sim_dir: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """{layer-dir basename: result.json} and {layer name: [result.json]}."""
    by_dir: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    for p in sorted(sim_dir.glob("*/result.json")):
        by_dir[p.parent.name] = p
        try:
            name = json.loads(p.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(name, str):
            by_name.setdefault(name, []).append(p)
    return by_dir, by_name


def _load_result(index, dir_base: str, name: str) -> tuple[dict | None, Path | None]:
    by_dir, by_name = index
    p = by_dir.get(dir_base)
    if p is None:
        cands = by_name.get(name, [])
        if len(cands) != 1:
            return None, None
        p = cands[0]
    try:
        r = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _user_error(f"{p}: expected a JSON sim result, found a parse error ({e})") from None
    if not isinstance(r, dict):
        raise _user_error(f"{p}: expected a JSON object, found {type(r).__name__}")
    return r, p


def _int_or_none(v):
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _check_result(r: dict, path: Path, lc: LayerCost) -> dict:
    """Cross-checks one sim result against the cost model. Returns
    {bit_exact, cycles_rtl, stall, cycles_compared, mismatches, failures}."""
    mism: list[str] = []
    fail: list[str] = []
    where = f"{lc.name} ({lc.mode}, {path})"
    for key, want in (("name", lc.name), ("mode", lc.mode), ("rows", lc.rows), ("cols", lc.cols)):
        if key in r and r[key] != want:
            mism.append(f"{where}: result.json {key} is {r[key]!r}, the image says {want!r}")
    bit_exact = r.get("bit_exact")
    if bit_exact is not True:
        fail.append(f"{where}: not bit exact (bit_exact={bit_exact!r})")
    if r.get("passed") is False:
        fail.append(f"{where}: the simulation did not pass (passed=false)")
    if r.get("error"):
        fail.append(f"{where}: simulation error: {str(r['error'])[:500]}")
    crtl = r.get("counters_rtl")
    cycles_rtl = stall = None
    cycles_compared = False
    if not isinstance(crtl, dict):
        mism.append(f"{where}: no RTL counters (counters_rtl={crtl!r})")
        cycles_rtl = _int_or_none(r.get("cycles_rtl"))
    else:
        for k, want in lc.beats.items():
            if k in ("cycles", "stall"):
                continue
            got = crtl.get(k)
            if got != want:
                mism.append(f"{where}: {k} beats: cost model {want}, RTL {got}")
        cycles_rtl = _int_or_none(crtl.get("cycles", r.get("cycles_rtl")))
        stall = _int_or_none(crtl.get("stall"))
        top = _int_or_none(r.get("cycles_rtl"))
        if top is not None and cycles_rtl is not None and top != cycles_rtl:
            mism.append(f"{where}: cycles_rtl {top} differs from counters_rtl.cycles {cycles_rtl}")
        if cycles_rtl is None:
            mism.append(f"{where}: no RTL cycle count")
        elif stall == 0:
            cycles_compared = True
            if cycles_rtl != lc.cycles:
                mism.append(f"{where}: cycles: cost model {lc.cycles}, RTL {cycles_rtl}")
        elif stall is None:
            mism.append(f"{where}: no RTL stall counter")
        # stall > 0: the run had gaps/back-pressure; only beat counts are comparable
    cmod = r.get("counters_model")
    if isinstance(cmod, dict):
        for k, want in lc.beats.items():
            if k in cmod and cmod[k] != want:
                mism.append(f"{where}: the sim's golden counters ({k}={cmod[k]}) differ from "
                            f"the cost model's ({want}): stale results or another config?")
    return {"bit_exact": bit_exact if isinstance(bit_exact, bool) else None,
            "cycles_rtl": cycles_rtl, "stall": stall, "cycles_compared": cycles_compared,
            "mismatches": mism, "failures": fail}


# ------------------------------------------------------------------------ core
def _sim_fields(chk: dict | None, cycles_model: int, prefix: str = "") -> dict:
    """One image set's simulation columns of a layer row (None: not simulated)."""
    sim = chk is not None
    return {prefix + "simulated": sim,
            prefix + "bit_exact": chk["bit_exact"] if sim else None,
            prefix + "cycles_rtl": chk["cycles_rtl"] if sim else None,
            prefix + "cycles_model": cycles_model,
            prefix + "stall_rtl": chk["stall"] if sim else None,
            prefix + "model_matches_rtl": not chk["mismatches"] if sim else None}


def _layer_list(imageset, where: str) -> list[dict]:
    entries = imageset.manifest["layers"]
    names = [e["name"] for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _user_error(f"{where}: layer names must be unique, found duplicates {dup}")
    return entries


def build_summary(images_dir, sim_dir=None, baseline_images_dir=None,
                  baseline_sim_dir=None) -> dict:
    images_dir = Path(images_dir)
    imgs = read_images(images_dir)
    cfg: AccelConfig = imgs.config
    entries = _layer_list(imgs, str(images_dir / "manifest.json"))

    base_entries: dict[str, dict] | None = None
    if baseline_images_dir is not None:
        bdir = Path(baseline_images_dir)
        bimgs = read_images(bdir)
        bc = bimgs.config
        if (bc.bus, bc.mults) != (cfg.bus, cfg.mults):
            raise _user_error(
                f"{bdir / 'manifest.json'}: config: expected the same accelerator as "
                f"{images_dir} (bus={cfg.bus}, mults={cfg.mults}), found bus={bc.bus}, "
                f"mults={bc.mults}")
        base_entries = {e["name"]: e for e in _layer_list(bimgs, str(bdir / "manifest.json"))}
        for e in entries:
            b = base_entries.get(e["name"])
            if b is None:
                raise _user_error(f"{bdir / 'manifest.json'}: layers: expected a layer named "
                                  f"{e['name']!r} (it is in {images_dir}), found none")
            if b["mode"] != BASELINE or (b["rows"], b["cols"]) != (e["rows"], e["cols"]):
                raise _user_error(
                    f"{bdir / 'manifest.json'}: layer {e['name']}: expected int8 "
                    f"{e['rows']}x{e['cols']}, found {b['mode']} {b['rows']}x{b['cols']}")

    sim_index = bsim_index = None
    for d, label in ((sim_dir, "--sim"), (baseline_sim_dir, "--baseline-sim")):
        if d is not None and not Path(d).is_dir():
            raise _user_error(f"{label} {d}: expected a folder written by `ssvq sim`, found none")
    if sim_dir is not None:
        sim_index = _index_results(Path(sim_dir))
    if baseline_sim_dir is not None:
        bsim_index = _index_results(Path(baseline_sim_dir))

    layers = [(e["name"], e["rows"], e["cols"], e["mode"]) for e in entries]
    cmp = compare(cfg, layers, entries[0]["mode"], BASELINE)

    rows_out, failures, mismatches = [], [], []
    sel_cycles = sel_base = 0
    n_sim = n_bsim = 0
    for e, lcmp in zip(entries, cmp.layers):
        lc, bl = lcmp.cost, lcmp.base
        row = OrderedDict(name=e["name"], rows=e["rows"], cols=e["cols"], method=e["mode"],
                          bits_per_weight=lc.bits_per_weight)
        chk = bchk = None
        if sim_index is not None:
            r, p = _load_result(sim_index, Path(e["dir"]).name, e["name"])
            if r is not None:
                chk = _check_result(r, p, lc)
        if bsim_index is not None:
            bdir_name = Path((base_entries or {}).get(e["name"], e)["dir"]).name
            r, p = _load_result(bsim_index, bdir_name, e["name"])
            if r is not None:
                bchk = _check_result(r, p, bl)
        for c in (chk, bchk):
            if c is not None:
                failures += c["failures"]
                mismatches += c["mismatches"]
        n_sim += chk is not None
        n_bsim += bchk is not None
        use_rtl = (chk is not None and bchk is not None and chk["cycles_compared"]
                   and bchk["cycles_compared"])
        cyc = chk["cycles_rtl"] if use_rtl else lc.cycles
        bcyc = bchk["cycles_rtl"] if use_rtl else bl.cycles
        sel_cycles += cyc
        sel_base += bcyc
        row.update(_sim_fields(chk, lc.cycles))
        row.update(_sim_fields(bchk, bl.cycles, "baseline_"))
        row.update(
            speedup=bcyc / cyc,
            speedup_model=lcmp.speedup,
            cycles_source="rtl" if use_rtl else "model",
            speedup_bound=lcmp.speedup_bound,
            baseline_bits_per_weight=bl.bits_per_weight,
            bits=lc.bits, total_bits=lc.total,
            baseline_bits=bl.bits, baseline_total_bits=bl.total,
            beats=lc.beats, baseline_beats=bl.beats,
            image_dir=e["dir"],
            mismatches=(chk or {}).get("mismatches", []) + (bchk or {}).get("mismatches", []),
            failures=(chk or {}).get("failures", []) + (bchk or {}).get("failures", []),
        )
        rows_out.append(row)

    sim_checks = [r for r in rows_out if r["simulated"]] + \
                 [r for r in rows_out if r["baseline_simulated"]]
    all_bit_exact = None
    model_matches = None
    if sim_checks:
        all_bit_exact = all(r["bit_exact"] is True for r in rows_out if r["simulated"]) and \
            all(r["baseline_bit_exact"] is True for r in rows_out if r["baseline_simulated"])
        model_matches = not mismatches
    modes = sorted({e["mode"] for e in entries})
    method = modes[0] if len(modes) == 1 else "mixed"
    shapes = OrderedDict()
    for r in rows_out:
        shapes.setdefault(f"{r['rows']}x{r['cols']}", []).append(r["name"])
    return OrderedDict(
        config=cfg.to_dict() | {"lanes": cfg.lanes},
        method=method,
        baseline=BASELINE,
        baseline_source="images" if baseline_images_dir is not None else "cost model",
        inputs={"images": str(images_dir), "baseline": _s(baseline_images_dir),
                "sim": _s(sim_dir), "baseline_sim": _s(baseline_sim_dir)},
        layers_total=len(rows_out),
        weights=cmp.cost.n_weights,
        speedup=sel_base / sel_cycles,
        speedup_model=cmp.speedup,
        speedup_bound=cmp.speedup_bound,
        bits_per_weight=cmp.bits_per_weight,
        baseline_bits_per_weight=cmp.base.bits_per_weight,
        cycles=sel_cycles, baseline_cycles=sel_base,
        cycles_model=cmp.cost.cycles, baseline_cycles_model=cmp.base.cycles,
        totals={method: dict(cmp.cost.bits) | {"total": cmp.cost.total},
                BASELINE: dict(cmp.base.bits) | {"total": cmp.base.total}}
        if method != BASELINE else {BASELINE: dict(cmp.base.bits) | {"total": cmp.base.total}},
        layers_simulated=n_sim,
        baseline_layers_simulated=n_bsim,
        all_bit_exact=all_bit_exact,
        model_matches_rtl=model_matches,
        passed=not failures and not mismatches,
        failures=failures,
        mismatches=mismatches,
        shapes={k: len(v) for k, v in shapes.items()},
        plots={},
        layers=rows_out,
    )


def _s(p):
    return None if p is None else str(p)


# ----------------------------------------------------------------------- plots
_STREAM_COLORS = {"header": "#7f7f7f", "codebook": "#9467bd", "params": "#8c564b",
                  "acts": "#2ca02c", "codes": "#1f77b4", "signs": "#17becf",
                  "weights": "#d62728", "outputs": "#ff7f0e"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_speedup(summary: dict, path: Path):
    plt = _plt()
    from matplotlib.patches import Patch
    rows = summary["layers"]
    n = len(rows)
    height = 0.28 * n + 2.4
    fig, ax = plt.subplots(figsize=(10, height))
    y = list(range(n))[::-1]
    colors = ["#1f77b4" if r["cycles_source"] == "rtl" else "#9ecae1" for r in rows]
    ax.barh(y, [r["speedup"] for r in rows], color=colors, height=0.7)
    ax.scatter([r["speedup_bound"] for r in rows], y, marker="D", color="#d62728", s=22,
               zorder=3)
    for yi, r in zip(y, rows):
        ax.text(r["speedup"] * 0.985, yi, f"{r['speedup']:.2f}", va="center", ha="right",
                fontsize=7, color="black")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['name']}  ({r['rows']}x{r['cols']})" for r in rows], fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(summary["speedup"], color="#08306b", ls="--", lw=1)
    handles = [Patch(color="#1f77b4", label="speedup from RTL cycles"),
               Patch(color="#9ecae1", label="speedup from cost-model cycles"),
               plt.Line2D([], [], color="#d62728", marker="D", ls="none",
                          label="bound 8 / bits-per-weight"),
               plt.Line2D([], [], color="#08306b", ls="--",
                          label=f"whole model {summary['speedup']:.2f}x")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    ax.set_xlabel(f"speedup over {BASELINE} (baseline cycles / {summary['method']} cycles)")
    ax.set_title(f"{summary['method']} vs {BASELINE}: per-layer speedup and bandwidth bound")
    ax.set_xlim(0, max(max(r["speedup_bound"] for r in rows),
                       max(r["speedup"] for r in rows), 1.0) * 1.08)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(True, axis="x", lw=0.3, alpha=0.6)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _unit(v: float) -> tuple[float, str]:
    for scale, name in ((1e9, "Gbit"), (1e6, "Mbit"), (1e3, "kbit")):
        if v >= scale:
            return scale, name
    return 1.0, "bit"


def plot_bits(summary: dict, path: Path):
    plt = _plt()
    method = summary["method"]
    rows = summary["layers"]
    panels = [(f"whole model ({len(rows)} layers)",
               {s: sum(r["baseline_bits"][s] for r in rows) for s in STREAMS},
               {s: sum(r["bits"][s] for r in rows) for s in STREAMS})]
    groups = OrderedDict()
    for r in rows:
        groups.setdefault((r["rows"], r["cols"]), []).append(r)
    for (nr, nc), rs in groups.items():
        k = len(rs)
        panels.append((f"{nr}x{nc}, per layer (x{k})",
                       {s: sum(r["baseline_bits"][s] for r in rs) / k for s in STREAMS},
                       {s: sum(r["bits"][s] for r in rs) / k for s in STREAMS}))
    used = [s for s in STREAMS if any(p[1][s] or p[2][s] for p in panels)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 1.6, 4.6),
                             squeeze=False)
    labels = [BASELINE.upper(), method.upper() if method != BASELINE else BASELINE.upper()]
    for ax, (title, base, meth) in zip(axes[0], panels):
        top = max(sum(base.values()), sum(meth.values()))
        scale, unit = _unit(top)
        bottoms = [0.0, 0.0]
        for s in used:
            vals = [base[s] / scale, meth[s] / scale]
            ax.bar([0, 1], vals, bottom=bottoms, color=_STREAM_COLORS[s], width=0.6, label=s)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
        for x, b in zip((0, 1), bottoms):
            ax.text(x, b, f"{b:.3g}", ha="center", va="bottom", fontsize=8)
        ratio = sum(base.values()) / max(sum(meth.values()), 1)
        ax.set_xticks([0, 1])
        ax.set_xticklabels(labels)
        ax.set_ylabel(unit)
        ax.set_ylim(0, max(bottoms) * 1.12)
        ax.set_title(f"{title}\n{ratio:.2f}x fewer bits", fontsize=9)
    handles, labs = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], labs[::-1], loc="center right", fontsize=8, title="stream")
    fig.suptitle(f"bits moved per stream: {BASELINE.upper()} vs {method.upper()}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / (2.6 * len(panels) + 1.6), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cycles(summary: dict, path: Path) -> bool:
    pts = []
    for r in summary["layers"]:
        if r["simulated"] and r["cycles_rtl"] is not None:
            pts.append((summary["method"], r["cycles_model"], r["cycles_rtl"], r["stall_rtl"]))
        if r["baseline_simulated"] and r["baseline_cycles_rtl"] is not None:
            pts.append((BASELINE, r["baseline_cycles_model"], r["baseline_cycles_rtl"],
                        r["baseline_stall_rtl"]))
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5.4))
    for mode, color, marker in ((summary["method"], "#1f77b4", "o"), (BASELINE, "#d62728", "s")):
        sel = [p for p in pts if p[0] == mode]
        if not sel:
            continue
        ok = [p for p in sel if not p[3]]
        st = [p for p in sel if p[3]]
        if ok:
            ax.scatter([p[1] for p in ok], [p[2] for p in ok], color=color, marker=marker,
                       label=f"{mode} ({len(ok)} layers)", alpha=0.8)
        if st:
            ax.scatter([p[1] for p in st], [p[2] for p in st], facecolors="none",
                       edgecolors=color, marker=marker,
                       label=f"{mode}, with stalls ({len(st)})")
        if mode == BASELINE and summary["method"] == BASELINE:
            break
    lo = min(min(p[1], p[2]) for p in pts) * 0.8
    hi = max(max(p[1], p[2]) for p in pts) * 1.25
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fmt = FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("cost-model cycles (sim.golden.timing)")
    ax.set_ylabel("RTL cycles (cnt_cycles)")
    ax.set_title("cost model vs RTL cycles, simulated layers")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------- report
def _fmt_bits(v: float) -> str:
    scale, unit = _unit(v)
    return f"{v / scale:.3f} {unit}" if scale > 1 else f"{int(v)} bit"


def _yn(v) -> str:
    return "–" if v is None else ("yes" if v else "**NO**")


def render_markdown(s: dict) -> str:
    m, cfg = s["method"], s["config"]
    L = [f"# Cost report: {m} vs {BASELINE}", ""]
    if not s["passed"]:
        L += ["> **VERIFICATION FAILED**: "
              f"{len(s['failures'])} simulation failure(s), {len(s['mismatches'])} cost-model/RTL "
              "mismatch(es); see [Problems](#problems).", ""]
    L += ["## Accelerator configuration", "",
          "| k | d | cw | mults | lanes | bus | max_rows | max_cols |",
          "|---|---|---|---|---|---|---|---|",
          f"| {cfg['k']} | {cfg['d']} | {cfg['cw']} | {cfg['mults']} | {cfg['lanes']} | "
          f"{cfg['bus']} | {cfg['max_rows']} | {cfg['max_cols']} |", "",
          "Inputs: " + ", ".join(f"{k} = `{v}`" for k, v in s["inputs"].items() if v) +
          f"; {BASELINE} baseline from the {s['baseline_source']}.", ""]
    n = s["layers_total"]
    shapes = ", ".join(f"{k} x{v}" for k, v in s["shapes"].items())
    src = ("RTL cycles" if all(r["cycles_source"] == "rtl" for r in s["layers"]) else
           "cost-model cycles" if all(r["cycles_source"] == "model" for r in s["layers"]) else
           "RTL cycles where both modes were simulated, cost-model cycles elsewhere")
    tb = s["totals"][BASELINE]["total"]
    tm = s["totals"].get(m, s["totals"][BASELINE])["total"]
    L += ["## Headline", "",
          f"- **{n} layers** ({shapes}), {s['weights']:,} weights, method **{m}**",
          f"- **Speedup over {BASELINE}: {s['speedup']:.3f}x** (whole model, sum of {BASELINE} "
          f"cycles / sum of {m} cycles, {src}; cost model alone: {s['speedup_model']:.3f}x)",
          f"- Bandwidth bound 8 / bits-per-weight: **{s['speedup_bound']:.3f}x**",
          f"- Bits per weight: **{s['bits_per_weight']:.4f}** ({m}) vs "
          f"{s['baseline_bits_per_weight']:.4f} ({BASELINE})",
          f"- Cycles: {s['cycles']:,} ({m}) vs {s['baseline_cycles']:,} ({BASELINE})",
          f"- Bits moved, all streams: {_fmt_bits(tm)} ({m}) vs {_fmt_bits(tb)} ({BASELINE}), "
          f"{tb / tm:.2f}x fewer",
          f"- Simulated layers: {s['layers_simulated']}/{n} ({m}), "
          f"{s['baseline_layers_simulated']}/{n} ({BASELINE}); all bit exact: "
          f"{_yn(s['all_bit_exact'])}; cost model matches RTL counters: "
          f"{_yn(s['model_matches_rtl'])}", ""]
    L += ["## Per layer", "",
          f"| # | layer | rows x cols | method | bits/weight | simulated | bit exact | "
          f"cycles RTL | cycles model | {BASELINE} cycles RTL | {BASELINE} cycles model | "
          "speedup | bound | model = RTL |",
          "|---:|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]

    def c(v):
        return "–" if v is None else f"{v:,}"

    for i, r in enumerate(s["layers"]):
        sim = ("both" if r["simulated"] and r["baseline_simulated"] else m if r["simulated"]
               else BASELINE if r["baseline_simulated"] else "no")
        be = [v for v in (r["bit_exact"], r["baseline_bit_exact"]) if v is not None]
        mm = [v for v in (r["model_matches_rtl"], r["baseline_model_matches_rtl"])
              if v is not None]
        L.append(f"| {i} | `{r['name']}` | {r['rows']}x{r['cols']} | {r['method']} | "
                 f"{r['bits_per_weight']:.4f} | {sim} | {_yn(all(be) if be else None)} | "
                 f"{c(r['cycles_rtl'])} | {c(r['cycles_model'])} | {c(r['baseline_cycles_rtl'])} | "
                 f"{c(r['baseline_cycles_model'])} | {r['speedup']:.3f}"
                 f"{'' if r['cycles_source'] == 'rtl' else '*'} | {r['speedup_bound']:.3f} | "
                 f"{_yn(all(mm) if mm else None)} |")
    L += ["", "\\* speedup from cost-model cycles (the layer was not simulated in both modes, "
          "or a run had stalls).", ""]

    L += ["## Accesses per stream (whole model)", "",
          f"| stream | {BASELINE} bits | {m} bits | {BASELINE} beats | {m} beats | "
          f"{m} share |", "|---|---:|---:|---:|---:|---:|"]
    bus = cfg["bus"]
    mt = s["totals"].get(m, s["totals"][BASELINE])
    for st in STREAMS:
        b, v = s["totals"][BASELINE][st], mt[st]
        L.append(f"| {st} | {b:,} | {v:,} | {b // bus:,} | {v // bus:,} | "
                 f"{100 * v / mt['total']:.1f}% |")
    L.append(f"| **total** | **{tb:,}** | **{tm:,}** | {tb // bus:,} | {tm // bus:,} | 100% |")
    L.append("")
    groups = OrderedDict()
    for r in s["layers"]:
        groups.setdefault((r["rows"], r["cols"]), []).append(r)
    L += ["### Per distinct shape (one layer)", "",
          "| shape | layers | " + " | ".join(f"{st} {BASELINE} / {m}" for st in STREAMS) +
          " | cycles " + f"{BASELINE} / {m} |",
          "|---|---:|" + "---:|" * (len(STREAMS) + 1)]
    for (nr, nc), rs in groups.items():
        r0 = rs[0]
        cells = " | ".join(f"{r0['baseline_bits'][st]:,} / {r0['bits'][st]:,}" for st in STREAMS)
        L.append(f"| {nr}x{nc} | {len(rs)} | {cells} | {r0['baseline_cycles_model']:,} / "
                 f"{r0['cycles_model']:,} |")
    L.append("")

    L += ["## How the numbers are counted", "",
          "- Every stream is charged its **beats x bus width** (bits moved over the "
          f"{bus}-bit bus, format padding included). Beat counts and cycles come from "
          "`sim.golden.timing(...).counters`, the numbers the RTL's performance counters are "
          "held to; the cost model does not re-derive them.",
          "- Streams: `header` (one 64-bit record), `codebook` (K x D x 8-bit codewords, "
          "vq/ssvq), `params` (per-row 64-bit bias/mult/shift records), `acts` (int8 "
          "activations padded to whole MAC groups), `codes`/`signs` (vq/ssvq weight blocks), "
          "`weights` (int8 weight blocks), `outputs` (int8 results, bus/8 per beat).",
          "- **Bits per weight** counts weight storage only: codebook + codes + signs + int8 "
          "weights as streamed, plus 16 bits per row for the per-row scale, over rows x cols. "
          "Whole model: total weight-side bits / total weights.",
          "- **Speedup** = baseline cycles / method cycles on the same accelerator "
          "configuration (int8 timing depends only on bus and mults). Per layer it uses RTL "
          "cycles when the layer was simulated stall-free in both modes, else the cost model's; "
          "whole model = sum of baseline cycles / sum of method cycles.",
          "- **Bound** = 8 / bits-per-weight: the speedup if weight traffic at one beat per "
          "cycle were the only cost. Loading the codebook, params and activations, and the "
          "pipeline latency, keep the real speedup below it.",
          "- **Cross-check**: for every simulated layer, each beat counter (header, codebook, "
          "params, acts, codes, signs, weights, out) of the RTL must equal the cost model, and "
          "so must cycles when the RTL counted no stall cycles. Any difference is listed "
          "below and makes `ssvq report` exit with status 1.", ""]

    L += ["## Plots", ""]
    for key, title in (("speedup", "Per-layer speedup vs bound"),
                       ("bits", f"Bits per stream, {BASELINE.upper()} vs {m.upper()}"),
                       ("cycles", "Cost model vs RTL cycles")):
        f = s["plots"].get(key)
        if f:
            L += [f"### {title}", "", f"[{f}]({f})", "", f"![{title}]({f})", ""]
        else:
            L += [f"### {title}", "", "(no simulated layers: not drawn)", ""]

    L += ["## Problems", ""]
    if s["failures"] or s["mismatches"]:
        L += [f"- **FAIL** {x}" for x in s["failures"]]
        L += [f"- **MISMATCH** {x}" for x in s["mismatches"]]
    else:
        L.append("None." if s["layers_simulated"] + s["baseline_layers_simulated"] else
                 "None found; no layer was simulated, so the cost model was not checked "
                 "against the RTL in this report.")
    L.append("")
    return "\n".join(L)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_report(images_dir, out_dir, sim_dir=None, baseline_images_dir=None,
                 baseline_sim_dir=None) -> dict:
    """Writes summary.json, report.md and the PNG plots into out_dir (replacing it
    as a whole) and returns the summary."""
    summary = build_summary(images_dir, sim_dir, baseline_images_dir, baseline_sim_dir)
    with atomic_dir(out_dir) as tmp:
        plot_speedup(summary, tmp / PLOTS["speedup"])
        summary["plots"]["speedup"] = PLOTS["speedup"]
        plot_bits(summary, tmp / PLOTS["bits"])
        summary["plots"]["bits"] = PLOTS["bits"]
        if plot_cycles(summary, tmp / PLOTS["cycles"]):
            summary["plots"]["cycles"] = PLOTS["cycles"]
        (tmp / "report.md").write_text(render_markdown(summary))
        text = json.dumps(summary, indent=1, default=_json_default, allow_nan=False)
        (tmp / "summary.json").write_text(text + "\n")
    return summary


def report_cmd(args) -> int:
    import sys
    summary = write_report(args.images, args.out, sim_dir=args.sim,
                           baseline_images_dir=args.baseline,
                           baseline_sim_dir=args.baseline_sim)
    s = summary
    n = s["layers_total"]
    print(f"ssvq report: {s['method']} vs {BASELINE}, {n} layers: speedup {s['speedup']:.3f}x "
          f"(bound {s['speedup_bound']:.3f}x), {s['bits_per_weight']:.4f} bits/weight")
    print(f"ssvq report: simulated {s['layers_simulated']}/{n} ({s['method']}), "
          f"{s['baseline_layers_simulated']}/{n} ({BASELINE}); all bit exact: "
          f"{s['all_bit_exact']}; cost model matches RTL: {s['model_matches_rtl']}")
    if (args.sim or args.baseline_sim) and not (s["layers_simulated"]
                                                 or s["baseline_layers_simulated"]):
        print("ssvq report: warning: --sim given but no result.json matched any layer",
              file=sys.stderr)
    for x in s["failures"]:
        print(f"ssvq report: FAIL: {x}", file=sys.stderr)
    for x in s["mismatches"]:
        print(f"ssvq report: MISMATCH: {x}", file=sys.stderr)
    print(f"ssvq report: wrote {Path(args.out) / 'report.md'}")
    if not s["passed"]:
        print(f"ssvq report: FAILED: {len(s['failures'])} simulation failure(s), "
              f"{len(s['mismatches'])} cost-model/RTL mismatch(es)", file=sys.stderr)
        return 1
    return 0


