"""Cost and verification report for a format-v2 image set (the library behind
`ssvq report`; the command itself lives in ssvq/app/commands.py).

`write_report(images_dir, out_dir, ...)` reads an image set, decodes and checks
every layer with `ImageSet.layer(name)` (the same checks `ssvq sim` makes, so a
corrupted image raises ImageError before anything is written), charges every
layer with the cost model (`sim.cost`) against int8 and int4 baselines on one
build, takes in the `result.json` that `ssvq sim` wrote for simulated layers
(strictly validated: a malformed one raises UserError naming the file and the
field), and writes report.md, summary.json and PNG plots into `out_dir` as a
whole (ssvq.files.atomic_dir: a failure leaves no half report).

Optionally the same model compressed to int8 (`baseline_images_dir`, checked the
same way) and its sim results are shown beside; without it the int8 and int4
baselines come from the cost model alone (they always do for the speedups).

A failed verification (a simulated layer not bit-exact or not cycle-exact, or
a sim result from another golden model) does not raise: the summary says
`passed: false` and lists it, and report.md says VERIFICATION FAILED.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from sim import golden
from sim.cost import BASELINES, STREAMS, WEIGHT_FIELDS, compare
from ssvq.config import COUNTERS, ROW_SCALE_BITS
from ssvq.files import load_json
from ssvq.errors import ConfigError, ImageError, UserError
from ssvq.files import atomic_dir
from ssvq.image import read_images

REPORT_FORMAT = "ssvq-report"
REPORT_VERSION = 2
PLOTS = {"speedup": "speedup_per_layer.png", "bits": "bits_per_stream.png"}
BASELINE_IMAGES = "int8"        # what a baseline image folder must hold
RESULT_FILE = "result.json"


# ------------------------------------------------------------------ sim results
def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def _is_int(v) -> bool:
    return type(v) is int


def _bad(path, field, expected, found) -> UserError:
    return UserError(f"{path}: {field}: expected {expected}, found {found}")


def _counters(path, r: dict, key: str) -> dict:
    v = r[key]
    if not isinstance(v, dict):
        raise _bad(path, key, f"an object of integer counters {list(COUNTERS)}", _type_name(v))
    if set(v) != set(COUNTERS):
        raise _bad(path, key, f"exactly the counters {list(COUNTERS)}", sorted(v))
    for c in COUNTERS:
        if not _is_int(v[c]) or v[c] < 0:
            raise _bad(path, f"{key}.{c}", "a non-negative integer", repr(v[c])[:60])
    return {c: v[c] for c in COUNTERS}


def read_result(path) -> dict:
    """One `ssvq sim` result.json, validated field by field (UserError otherwise).

    Always required: name, config, mode (str), rows, cols (int), passed, bit_exact
    (bool), cycles_rtl, cycles_model (int), counters_rtl, counters_model (objects
    of exactly the COUNTERS, integers). Optional: stall_prob (number in [0, 1),
    default 0), error (str or null), problems (list of str). A crashed run
    (passed false with a non-empty error) may have null or no cycles and counters.
    """
    path = Path(path)
    r = load_json(path, UserError, "a sim result")
    if not isinstance(r, dict):
        raise UserError(f"{path}: expected a JSON object (a sim result), found "
                        f"{_type_name(r)}")
    for key, ok, what in (("name", lambda v: isinstance(v, str), "a string"),
                          ("config", lambda v: isinstance(v, str), "a layer config name"),
                          ("mode", lambda v: isinstance(v, str), "a string"),
                          ("rows", _is_int, "an integer"), ("cols", _is_int, "an integer"),
                          ("passed", lambda v: type(v) is bool, "true or false"),
                          ("bit_exact", lambda v: type(v) is bool, "true or false")):
        if key not in r:
            raise _bad(path, key, what, "no such field")
        if not ok(r[key]):
            raise _bad(path, key, what, f"{_type_name(r[key])} {repr(r[key])[:60]}")
    error = r.get("error")
    if error is not None and not isinstance(error, str):
        raise _bad(path, "error", "a string or null", _type_name(error))
    problems = r.get("problems", [])
    if not (isinstance(problems, list) and all(isinstance(p, str) for p in problems)):
        raise _bad(path, "problems", "a list of strings", repr(problems)[:60])
    stall = r.get("stall_prob", 0.0)
    if (type(stall) not in (int, float) or not math.isfinite(stall)
            or not 0 <= stall < 1):
        raise _bad(path, "stall_prob", "a number in [0, 1)", repr(stall)[:60])
    crashed = r["passed"] is False and bool(error)
    out = {k: r[k] for k in ("name", "config", "mode", "rows", "cols", "passed", "bit_exact")}
    out.update(error=error, problems=list(problems), stall_prob=float(stall), crashed=False)
    nums = ("cycles_rtl", "cycles_model", "counters_rtl", "counters_model")
    if crashed and all(r.get(k) is None for k in nums):
        out.update(dict.fromkeys(nums), crashed=True)
        return out
    for key in ("cycles_rtl", "cycles_model"):
        if key not in r:
            raise _bad(path, key, "an integer", "no such field")
        if not _is_int(r[key]) or r[key] < 0:
            raise _bad(path, key, "a non-negative integer",
                       f"{_type_name(r[key])} {repr(r[key])[:60]}")
        out[key] = r[key]
    for key in ("counters_rtl", "counters_model"):
        if key not in r:
            raise _bad(path, key, "an object of integer counters", "no such field")
        out[key] = _counters(path, r, key)
    return out


def _check_result(res: dict, path: Path, layer: dict, cfg) -> tuple[dict, list, list]:
    """A validated result against the layer it is for and the golden model on the
    image's build. Returns (fields, failures, mismatches)."""
    name, lc = layer["name"], layer["lc"]
    for key, want in (("name", name), ("config", lc.name), ("mode", lc.mode),
                      ("rows", layer["rows"]), ("cols", layer["cols"])):
        if res[key] != want:
            raise _bad(path, key, f"{want!r} (layer {name} of the images)", repr(res[key]))
    fails, mism = [], []
    where = f"{name} ({lc.name}, {path})"
    if not res["bit_exact"]:
        fails.append(f"{where}: not bit exact")
    if not res["passed"]:
        why = res["error"] or "; ".join(res["problems"][:3]) or "passed is false"
        fails.append(f"{where}: the simulation did not pass: {why[:300]}")
    t = golden.timing(cfg, lc, layer["rows"], layer["cols"])
    cycle_exact = None
    if not res["crashed"]:
        if res["cycles_model"] != t.counters["cycles"] or res["counters_model"] != t.counters:
            mism.append(f"{where}: the sim's golden model (cycles {res['cycles_model']}, "
                        f"counters {res['counters_model']}) differs from this report's "
                        f"({t.counters}): stale results or another build?")
        if res["cycles_rtl"] != res["counters_rtl"]["cycles"]:
            mism.append(f"{where}: cycles_rtl {res['cycles_rtl']} differs from "
                        f"counters_rtl.cycles {res['counters_rtl']['cycles']}")
        stalled = res["stall_prob"] > 0
        # with injected stalls only the beat counters are comparable
        keys = [c for c in COUNTERS if not (stalled and c in ("cycles", "stall"))]
        diff = [f"{c} RTL {res['counters_rtl'][c]} model {res['counters_model'][c]}"
                for c in keys if res["counters_rtl"][c] != res["counters_model"][c]]
        if diff:
            mism.append(f"{where}: " + ("beat counters" if stalled else "not cycle exact")
                        + ": " + ", ".join(diff))
        if not stalled:
            cycle_exact = not diff and res["cycles_rtl"] == res["cycles_model"]
    fields = {"simulated": True, "passed": res["passed"], "bit_exact": res["bit_exact"],
              "cycle_exact": cycle_exact, "cycles_rtl": res["cycles_rtl"],
              "cycles_model": t.counters["cycles"], "counters_rtl": res["counters_rtl"],
              "counters_model": dict(t.counters), "stall_prob": res["stall_prob"],
              "result": str(path)}
    return fields, fails, mism


NOT_SIMULATED = {"simulated": False, "passed": None, "bit_exact": None, "cycle_exact": None,
                 "cycles_rtl": None, "counters_rtl": None, "stall_prob": None, "result": None}


# ------------------------------------------------------------------ images
def _read_layers(images_dir) -> tuple:
    """(ImageSet, [layer dict]) after decoding and checking every layer."""
    images_dir = Path(images_dir)
    imgs = read_images(images_dir)
    mpath = images_dir / "manifest.json"
    layers = []
    for i, name in enumerate(imgs.layer_names):
        img = imgs.layer(name)                      # every check of the image (ImageError)
        e = imgs.entry(name)
        meta = e.get("meta", {})
        if not isinstance(meta, dict):
            raise ImageError(f"{mpath}: layers[{i}].meta: expected an object, found "
                             f"{_type_name(meta)}")
        try:                        # it goes into summary.json, which is strict JSON
            json.dumps(meta, allow_nan=False)
        except ValueError:
            raise ImageError(f"{mpath}: layers[{i}].meta: expected an object of standard "
                             f"JSON values, found NaN or Infinity") from None
        layers.append({"index": i, "name": name, "lc": img.config, "rows": img.rows,
                       "cols": img.cols, "dir": e["dir"], "dir_name": Path(e["dir"]).name,
                       "config_fields": dict(e["config"]), "meta": meta})
    return imgs, layers


def _sim_dir(d, label: str) -> Path | None:
    if d is None:
        return None
    d = Path(d)
    if not d.is_dir():
        raise UserError(f"{label} {d}: expected a folder written by `ssvq sim`, found "
                        f"{'a file' if d.exists() else 'nothing'}")
    return d


def _factors(layers: list) -> dict:
    """Image layer -> (model layer, rows, cols) for the factors of a low-rank pair, from
    the compressor's per-layer meta `factor_of` ({layer, rank, rows, cols})."""
    out = {}
    for lay in layers:
        f = lay["meta"].get("factor_of") if isinstance(lay["meta"], dict) else None
        if (isinstance(f, dict) and isinstance(f.get("layer"), str)
                and all(type(f.get(k)) is int and f[k] > 0 for k in ("rows", "cols"))):
            out[lay["name"]] = (f["layer"], f["rows"], f["cols"])
    return out


def _results(sim_dir: Path | None, layers: list, cfg) -> tuple[list, list, list]:
    rows, fails, mism = [], [], []
    for lay in layers:
        p = None if sim_dir is None else sim_dir / lay["dir_name"] / RESULT_FILE
        if p is None or not p.exists():
            t = golden.timing(cfg, lay["lc"], lay["rows"], lay["cols"])
            rows.append(dict(NOT_SIMULATED, cycles_model=t.counters["cycles"],
                             counters_model=dict(t.counters)))
            continue
        f, a, b = _check_result(read_result(p), p, lay, cfg)
        rows.append(f)
        fails += a
        mism += b
    return rows, fails, mism


def build_summary(images_dir, sim_dir=None, baseline_images_dir=None,
                  baseline_sim_dir=None) -> dict:
    """Everything the report says, as a JSON-able dict (reads and checks; writes nothing)."""
    images_dir = Path(images_dir)
    imgs, layers = _read_layers(images_dir)
    cfg = imgs.config
    sdir = _sim_dir(sim_dir, "sim folder")
    if baseline_sim_dir is not None and baseline_images_dir is None:
        raise UserError(f"baseline sim folder {baseline_sim_dir}: expected the baseline "
                        f"images it was simulated from too, found none")
    bsdir = _sim_dir(baseline_sim_dir, "baseline sim folder")

    blayers = bimgs = None
    if baseline_images_dir is not None:
        bdir = Path(baseline_images_dir)
        bimgs, bl = _read_layers(bdir)
        bc, bm = bimgs.config, bdir / "manifest.json"
        if (bc.bus, bc.mults) != (cfg.bus, cfg.mults):
            raise UserError(f"{bm}: config: expected the bus and mults of {images_dir} "
                            f"(bus={cfg.bus}, mults={cfg.mults}), found bus={bc.bus}, "
                            f"mults={bc.mults}")
        by = {x["name"]: x for x in bl}
        blayers = []
        for lay in layers:
            b = by.get(lay["name"])
            if b is None:
                raise UserError(f"{bm}: layers: expected a layer named {lay['name']!r} (it is "
                                f"in {images_dir}), found none")
            if b["lc"].name != BASELINE_IMAGES or (b["rows"], b["cols"]) != (lay["rows"],
                                                                              lay["cols"]):
                raise UserError(f"{bm}: layer {lay['name']}: expected {BASELINE_IMAGES} "
                                f"{lay['rows']}x{lay['cols']}, found {b['lc'].name} "
                                f"{b['rows']}x{b['cols']}")
            blayers.append(b)

    try:
        cmp = compare(cfg, [(x["name"], x["lc"], x["rows"], x["cols"]) for x in layers],
                      originals=_factors(layers))
    except ConfigError as e:      # a baseline too wide for this build (e.g. max_cols)
        raise UserError(f"{images_dir / 'manifest.json'}: config: {e}") from None
    sims, fails, mism = _results(sdir, layers, cfg)
    bsims = None
    if blayers is not None:
        bsims, bf, bmm = _results(bsdir, blayers, bimgs.config)
        fails += bf
        mism += bmm

    rows = []
    rtl_cyc = rtl_base = rtl_n = 0
    for i, (lay, lcmp, s) in enumerate(zip(layers, cmp.layers, sims)):
        c = lcmp.cost
        row = {"index": i, "name": lay["name"], "config": lay["lc"].name,
               "config_fields": lay["config_fields"], "meta": lay["meta"], "dir": lay["dir"],
               "rows": lay["rows"], "cols": lay["cols"], "shape": f"{lay['rows']}x{lay['cols']}",
               "bits_per_weight": c.bits_per_weight, "speedup_bound": c.speedup_bound,
               "cycles": c.cycles, "weight_cycles": c.weight_cycles,
               "bus_utilisation": c.bus_utilisation,
               "stream_utilisation": c.stream_utilisation,
               "speedup": dict(lcmp.speedup),
               "baseline_cycles": {b: x.cycles for b, x in lcmp.base.items()},
               "beats": dict(c.beats), "bits": dict(c.bits), "weight_bits": dict(c.weight_bits),
               "baseline_bits": {b: dict(x.bits) for b, x in lcmp.base.items()}}
        row.update(s)
        if bsims is not None:
            b = bsims[i]
            row.update({"baseline_" + k: v for k, v in b.items()})
            if (s["cycle_exact"] and b["cycle_exact"]):
                row["speedup_rtl_int8"] = b["cycles_rtl"] / s["cycles_rtl"]
                rtl_cyc += s["cycles_rtl"]
                rtl_base += b["cycles_rtl"]
                rtl_n += 1
        rows.append(row)

    def all_of(key, prefix=""):
        vals = [r[prefix + key] for r in rows if r.get(prefix + "simulated")]
        vals = [v for v in vals if v is not None]
        return all(vals) if vals else None

    be = [all_of("bit_exact")] + ([all_of("bit_exact", "baseline_")] if bsims else [])
    ce = [all_of("cycle_exact")] + ([all_of("cycle_exact", "baseline_")] if bsims else [])
    be, ce = [v for v in be if v is not None], [v for v in ce if v is not None]
    m = cmp.cost
    summary = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "inputs": {"images": str(images_dir), "sim": _s(sim_dir),
                   "baseline_images": _s(baseline_images_dir),
                   "baseline_sim": _s(baseline_sim_dir)},
        "config": cfg.to_dict(),
        "build": cmp.build.to_dict(), "build_widened": cmp.widened,
        "baselines": list(BASELINES),
        "baseline_source": "images" if blayers is not None else "cost model",
        "layers_total": len(rows), "weights": m.n_weights,
        "configs": dict(Counter(r["config"] for r in rows)),
        "shapes": dict(Counter(r["shape"] for r in rows)),
        "speedup": dict(cmp.speedup),
        "bits_per_weight": m.bits_per_weight, "speedup_bound": m.speedup_bound,
        "baseline_bits_per_weight": {b: x.bits_per_weight for b, x in cmp.base.items()},
        "cycles": m.cycles, "baseline_cycles": {b: x.cycles for b, x in cmp.base.items()},
        "bus_utilisation": m.bus_utilisation, "stream_utilisation": m.stream_utilisation,
        "bits": dict(m.bits), "total_bits": m.total_bits, "weight_bits": dict(m.weight_bits),
        "baseline_bits": {b: dict(x.bits) for b, x in cmp.base.items()},
        "baseline_weight_bits": {b: dict(x.weight_bits) for b, x in cmp.base.items()},
        "low_rank": {f: list(o) for f, o in _factors(layers).items()},
        "layer_configs": [{"name": r["name"], "config": r["config"],
                           "fields": r["config_fields"], "meta": r["meta"]} for r in rows],
        "layers_simulated": sum(r["simulated"] for r in rows),
        "baseline_layers_simulated": (sum(r["baseline_simulated"] for r in rows)
                                      if bsims is not None else 0),
        "all_bit_exact": all(be) if be else None,
        "all_cycle_exact": all(ce) if ce else None,
        "speedup_rtl": ({"int8": rtl_base / rtl_cyc, "layers": rtl_n} if rtl_n else None),
        "passed": not fails and not mism,
        "failures": fails, "mismatches": mism,
        "plots": {},
        "layers": rows,
    }
    return summary


def _s(p):
    return None if p is None else str(p)


# ----------------------------------------------------------------------- plots
_COLORS = {"header": "#7f7f7f", "codebook": "#9467bd", "params": "#8c564b", "acts": "#2ca02c",
           "weights": "#d62728", "out": "#ff7f0e", "codes": "#1f77b4", "coefs": "#aec7e8",
           "signs": "#17becf", "int_weights": "#d62728", "padding": "#c7c7c7",
           "int8": "#d62728", "int4": "#1f77b4"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_speedup(summary: dict, path: Path):
    """Per-layer speedup over int8 and over int4 (horizontal bars)."""
    plt = _plt()
    rows = summary["layers"]
    n = len(rows)
    height = 0.42 * n + 2.0
    fig, ax = plt.subplots(figsize=(10, height))
    bls = summary["baselines"]
    h = 0.8 / len(bls)
    for j, b in enumerate(bls):
        ys = [n - 1 - i + 0.4 - h * (j + 0.5) for i in range(n)]
        vals = [r["speedup"][b] for r in rows]
        ax.barh(ys, vals, height=h * 0.95, color=_COLORS.get(b), label=f"over {b}")
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
        ax.axvline(summary["speedup"][b], color=_COLORS.get(b), ls="--", lw=1,
                   label=f"whole model over {b}: {summary['speedup'][b]:.2f}x")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks([n - 1 - i for i in range(n)])
    ax.set_yticklabels([f"{r['name']} ({r['config']}, {r['shape']})" for r in rows],
                       fontsize=7)
    ax.set_xlabel("speedup = baseline cycles / cycles (same build)")
    ax.set_title("per-layer speedup over the int8 and int4 baselines")
    ax.set_xlim(0, max(max(r["speedup"][b] for r in rows for b in bls), 1.0) * 1.15)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", lw=0.3, alpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _unit(v: float) -> tuple[float, str]:
    for scale, name in ((1e9, "Gbit"), (1e6, "Mbit"), (1e3, "kbit")):
        if v >= scale:
            return scale, name
    return 1.0, "bit"


def plot_bits(summary: dict, path: Path):
    """Bits moved per stream (whole model), the layers' configs beside each
    baseline; and the weight stream split by field."""
    plt = _plt()
    label = _label(summary)
    cols = [(label, summary["bits"], summary["weight_bits"])] + [
        (b, summary["baseline_bits"][b], summary["baseline_weight_bits"][b])
        for b in summary["baselines"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, keys, idx, title in ((axes[0], STREAMS, 1, "bits moved per stream"),
                                 (axes[1], WEIGHT_FIELDS, 2, "weight stream by field")):
        top = max(sum(c[idx].values()) for c in cols)
        scale, unit = _unit(top)
        bottoms = [0.0] * len(cols)
        for k in keys:
            vals = [c[idx][k] / scale for c in cols]
            if not any(vals):
                continue
            ax.bar(range(len(cols)), vals, bottom=bottoms, color=_COLORS[k], width=0.6,
                   label=k)
            bottoms = [a + v for a, v in zip(bottoms, vals)]
        for x, b in enumerate(bottoms):
            ax.text(x, b, f"{b:.4g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([c[0] for c in cols], fontsize=8)
        ax.set_ylabel(unit)
        ax.set_ylim(0, max(bottoms) * 1.12 or 1)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"whole model ({summary['layers_total']} layers): {label} vs "
                 + ", ".join(summary["baselines"]), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- text
def _label(s: dict) -> str:
    return next(iter(s["configs"])) if len(s["configs"]) == 1 else "mixed"


def _yn(v) -> str:
    return "–" if v is None else ("yes" if v else "**NO**")


def _c(v) -> str:
    return "–" if v is None else f"{v:,}"


def format_summary(s: dict) -> list[str]:
    """A few lines for the console."""
    sp = ", ".join(f"{s['speedup'][b]:.3f}x over {b}" for b in s["baselines"])
    out = [f"{s['layers_total']} layers ({', '.join(f'{k} x{v}' for k, v in s['configs'].items())})"
           f": {sp}",
           f"bits/weight {s['bits_per_weight']:.4f} (bound {s['speedup_bound']:.3f}x over 8 "
           f"bits), weight-phase bus utilisation {s['bus_utilisation']:.4f}, stream "
           f"utilisation {s['stream_utilisation']:.4f}",
           f"simulated: {s['layers_simulated']}/{s['layers_total']}"
           + (f" (baseline {s['baseline_layers_simulated']}/{s['layers_total']})"
              if s["baseline_source"] == "images" else "")
           + f"; all bit exact: {_yn(s['all_bit_exact']).strip('*')}"
           f"; all cycle exact: {_yn(s['all_cycle_exact']).strip('*')}"]
    if not s["passed"]:
        out.append(f"VERIFICATION FAILED: {len(s['failures'])} failure(s), "
                   f"{len(s['mismatches'])} mismatch(es)")
        out += ["  " + x for x in (s["failures"] + s["mismatches"])[:10]]
    return out


def render_markdown(s: dict) -> str:
    cfg, bls, label = s["config"], s["baselines"], _label(s)
    L = [f"# Cost report: {label} vs {', '.join(bls)}", ""]
    if not s["passed"]:
        L += [f"> **VERIFICATION FAILED**: {len(s['failures'])} failure(s), "
              f"{len(s['mismatches'])} mismatch(es); see [Problems](#problems).", ""]
    L += ["## Headline", ""]
    for b in bls:
        L.append(f"- **Speedup over {b}: {s['speedup'][b]:.3f}x** (whole model: sum of {b} "
                 f"cycles {s['baseline_cycles'][b]:,} / sum of cycles {s['cycles']:,})")
    bb = ", ".join(f"{s['baseline_bits_per_weight'][b]:.4f} ({b})" for b in bls)
    L += [f"- Bits per weight: **{s['bits_per_weight']:.4f}** vs {bb}; bandwidth bound "
          f"8 / bits-per-weight = {s['speedup_bound']:.3f}x",
          f"- Weight-phase bus utilisation {s['bus_utilisation']:.4f} beats/cycle; stream "
          f"utilisation (input beats / cycles) {s['stream_utilisation']:.4f}",
          *([f"- Low-rank pairs (run as chains, B then A on B's int8 outputs; the "
             f"baselines run each model layer unfactored and its weights count once): "
             + ", ".join(f"`{f}` of `{o[0]}` {o[1]}x{o[2]}" for f, o in s["low_rank"].items())]
            if s.get("low_rank") else []),
          f"- {s['layers_total']} layers, {s['weights']:,} weights; configs: "
          + ", ".join(f"`{k}` x{v}" for k, v in s["configs"].items()),
          f"- Simulated layers: {s['layers_simulated']}/{s['layers_total']}"
          + (f", baseline {s['baseline_layers_simulated']}/{s['layers_total']}"
             if s["baseline_source"] == "images" else "")
          + f"; all bit exact: {_yn(s['all_bit_exact'])}; all cycle exact "
          f"(cycles_rtl == cycles_model, counters_rtl == counters_model): "
          f"{_yn(s['all_cycle_exact'])}"]
    if s["speedup_rtl"]:
        L.append(f"- Speedup over int8 from RTL cycles, {s['speedup_rtl']['layers']} layer(s) "
                 f"simulated cycle-exact in both: {s['speedup_rtl']['int8']:.3f}x")
    L += ["", "## Accelerator build", "",
          "| " + " | ".join(cfg) + " |", "|" + "---|" * len(cfg),
          "| " + " | ".join(str(v) for v in cfg.values()) + " |", ""]
    if s["build_widened"]:
        L += [f"The baselines need the int decode with widths {s['build']['int_bits']}: "
              f"every cost figure is computed on this build widened to modes "
              f"{s['build']['modes']}, int_bits {s['build']['int_bits']}.", ""]
    L += ["Inputs: " + ", ".join(f"{k} = `{v}`" for k, v in s["inputs"].items() if v)
          + f"; baselines from the {s['baseline_source']}"
          + (" (int8 images shown beside; speedups from the cost model)"
             if s["baseline_source"] == "images" else "") + ".", ""]

    L += ["## Per layer", "",
          "| # | layer | config | shape | bits/weight | cycles | bus util | speedup int8 | "
          "speedup int4 | simulated | bit exact | cycles RTL | cycles model | cycle exact |"
          + (" int8 cycles RTL | int8 cycles model | int8 bit exact | int8 cycle exact |"
             if s["baseline_source"] == "images" else ""),
          "|---:|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---|"
          + ("---:|---:|---|---|" if s["baseline_source"] == "images" else "")]
    for r in s["layers"]:
        line = (f"| {r['index']} | `{r['name']}` | `{r['config']}` | {r['shape']} | "
                f"{r['bits_per_weight']:.4f} | {r['cycles']:,} | {r['bus_utilisation']:.4f} | "
                f"{r['speedup']['int8']:.3f} | {r['speedup']['int4']:.3f} | "
                f"{'yes' if r['simulated'] else 'no'} | {_yn(r['bit_exact'])} | "
                f"{_c(r['cycles_rtl'])} | {_c(r['cycles_model'])} | {_yn(r['cycle_exact'])} |")
        if s["baseline_source"] == "images":
            line += (f" {_c(r['baseline_cycles_rtl'])} | {_c(r['baseline_cycles_model'])} | "
                     f"{_yn(r['baseline_bit_exact'])} | {_yn(r['baseline_cycle_exact'])} |")
        L.append(line)
    L.append("")

    L += ["## Bits moved per stream (whole model)", "",
          f"| stream | {label} | " + " | ".join(bls) + f" | {label} beats | {label} share |",
          "|---|---:|" + "---:|" * len(bls) + "---:|---:|"]
    tot = s["total_bits"]
    for st in STREAMS:
        L.append(f"| {st} | {s['bits'][st]:,} | "
                 + " | ".join(f"{s['baseline_bits'][b][st]:,}" for b in bls)
                 + f" | {s['bits'][st] // cfg['bus']:,} | {100 * s['bits'][st] / tot:.1f}% |")
    L.append(f"| **total** | **{tot:,}** | "
             + " | ".join(f"{sum(s['baseline_bits'][b].values()):,}" for b in bls) + " | | |")
    L += ["", "Weight stream by field:", "",
          f"| field | {label} | " + " | ".join(bls) + " |", "|---|---:|" + "---:|" * len(bls)]
    for f in WEIGHT_FIELDS:
        L.append(f"| {f} | {s['weight_bits'][f]:,} | "
                 + " | ".join(f"{s['baseline_weight_bits'][b][f]:,}" for b in bls) + " |")
    L.append("")

    L += ["## Per-layer configuration (from the manifest)", "",
          "| # | layer | config | fields | meta |", "|---:|---|---|---|---|"]
    for i, lc in enumerate(s["layer_configs"]):
        L.append(f"| {i} | `{lc['name']}` | `{lc['config']}` | "
                 f"`{json.dumps(lc['fields'], sort_keys=True)}` | "
                 f"`{json.dumps(lc['meta'], sort_keys=True)[:200]}` |")
    L.append("")

    L += ["## How the numbers are counted", "",
          f"- Each stream is charged **beats x bus** ({cfg['bus']}-bit beats, format padding "
          "included). Beats and cycles are `sim.golden.timing` counters, the numbers the RTL's "
          "performance counters are held to.",
          "- The weight stream is split by field from the geometry: codes, coefficients, "
          "signs (ssvq) or int weights, per group x rows x groups; `padding` is the zero fill "
          "to a whole beat.",
          f"- **Bits per weight** = (codebook + weight stream as streamed + {ROW_SCALE_BITS} "
          "bits per row for the row scale) / (rows x cols); whole model: summed bits / summed "
          "weights.",
          "- **Speedup** = baseline cycles / cycles, every layer and its int8 / int4 "
          "baselines on the same build; whole model = summed baseline cycles / summed cycles.",
          "- **Bus utilisation**: weight beats per cycle of the weight phase. **Stream "
          "utilisation**: all input beats per cycle of the layer.",
          "- **Verification**: each layer is decoded and checked (files, digests, stream "
          "structure) before anything is reported. A simulated layer must be bit exact and, "
          "run without stalls, cycle exact: `cycles_rtl == cycles_model` and every counter "
          "of `counters_rtl == counters_model`; with injected stalls only the beat counters "
          "are compared.", ""]

    L += ["## Plots", ""]
    for key, title in (("speedup", "Per-layer speedup over int8 and int4"),
                       ("bits", "Bits moved per stream")):
        f = s["plots"].get(key)
        if f:
            L += [f"### {title}", "", f"![{title}]({f})", ""]
    L += ["## Problems", ""]
    if s["failures"] or s["mismatches"]:
        L += [f"- **FAIL** {x}" for x in s["failures"]]
        L += [f"- **MISMATCH** {x}" for x in s["mismatches"]]
    elif s["layers_simulated"] + s["baseline_layers_simulated"]:
        L.append("None.")
    else:
        L.append("None found; no layer was simulated, so no RTL result was checked.")
    L.append("")
    return "\n".join(L)


def write_report(images_dir, out_dir, sim_dir=None, baseline_images_dir=None,
                 baseline_sim_dir=None) -> dict:
    """Checks every input, then writes report.md, summary.json and the PNG plots
    into `out_dir` (replacing it as a whole) and returns the summary.
    Raises ImageError / UserError (nothing written) on bad input."""
    summary = build_summary(images_dir, sim_dir, baseline_images_dir, baseline_sim_dir)
    with atomic_dir(out_dir) as tmp:
        for key, fn in (("speedup", plot_speedup), ("bits", plot_bits)):
            fn(summary, tmp / PLOTS[key])
            summary["plots"][key] = PLOTS[key]
        (tmp / "report.md").write_text(render_markdown(summary))
        text = json.dumps(summary, indent=1, allow_nan=False)
        (tmp / "summary.json").write_text(text + "\n")
    return summary
