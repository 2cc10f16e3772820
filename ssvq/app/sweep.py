"""`ssvq sweep`: design-space sweep of accelerator builds on a whole model.

For every build point of a grid (ssvq.config.AccelConfig fields) it gets

* area from Yosys (hw.synth, synth_ecp5: LUT4, FF, MULT18X18D, DP16KD) and, with
  `--pnr`, Fmax from nextpnr-ecp5; without `--pnr` (the default: Yosys takes about a
  minute a point, place and route several) throughput uses a nominal clock
  (`--clock-mhz`, default 100 MHz, the synthesis target) and every table says so;
* a compression plan the build can run (choose_plan): `--plan NAME[,NAME...]` is a
  preference list (the first config the build runs is used for every layer); without
  it the plan is "auto": among the configs that have a MiniLM quality row (`--quality`)
  with best mean cosine >= `--min-cosine`, the ones with the fewest whole-model cycles
  on this build (within CYCLE_TOLERANCE, 1%), and of those the one with the least
  energy per token (then the higher cosine); with no quality file the preference list FALLBACK_LADDER; with
  `--images DIR` and no `--plan` each layer keeps the config it has in the image set;
* whole-model cycles, bits and access counts from the cost model (sim.cost, which
  calls sim.golden.timing, held to the RTL's counters), one token = one pass over all
  weights; weights per cycle, weights/s and time per token at the clock above;
* energy per token from the access counts (sim.energy, Horowitz ISSCC 2014 table);
* the fidelity of the plan where a quality run has its config (best mean_cosine of
  the rows with that config name, trained or not; blank otherwise).

Points run in parallel: concurrent.futures processes (`--backend local`, `--jobs`,
default 2) or Ray tasks (`--backend ray`, a local `ray.init(num_cpus=jobs)` unless Ray
is already initialised; Ray is imported only then). Each finished synthesis is cached
in OUT/points/<hash>.json (hash of the build, the synthesis options and the synthesis
function), written atomically, so an interrupted or repeated sweep reuses them; the cost
model numbers are recomputed every run (they take seconds). sweep.json, sweep.md and
the plots are each written to a temporary name and renamed, after every point is done.
"""
from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import os
import time
from pathlib import Path

from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import ConfigError, UserError
from ssvq.files import load_json

CACHE_VERSION = 1
MAX_POINTS = 512
FIELDS = tuple(AccelConfig().to_dict())
DEFAULT_QUALITY = "reports/measured/quality-minilm/summary.json"
FALLBACK_LADDER = ("ssvq-k256-d8", "vq-k256-d4", "ssvq-k256-d4", "int4", "int8")
DEFAULT_SYNTH = "hw.synth:synthesize_point"
# auto plan: configs within this fraction of the fewest cycles count as equally fast
CYCLE_TOLERANCE = 0.01
ROOT = Path(__file__).resolve().parents[2]

_SUBLAYERS = (("attention.self.query", 384, 384), ("attention.self.key", 384, 384),
              ("attention.self.value", 384, 384), ("attention.output.dense", 384, 384),
              ("intermediate.dense", 1536, 384), ("output.dense", 384, 1536))
# MiniLM-L6 (all-MiniLM-L6-v2): 6 encoder layers x 6 nn.Linear (rows = out, cols = in)
MINILM_LAYERS = tuple((f"encoder.layer.{i}.{n}", r, c) for i in range(6) for n, r, c in _SUBLAYERS)


# ------------------------------------------------------------------ grid
def _where_value(v) -> str:
    return json.dumps(v)


def parse_grid(data, where: str) -> tuple[list[AccelConfig], list[dict]]:
    """The build points of a grid: an object of AccelConfig field -> list of values
    (their cartesian product), a list of point objects, or an object with any of
    "base" (fields every point shares), "grid" (field -> values) and "points".
    Missing fields take AccelConfig's defaults. Returns (points, skipped): every single
    value and explicit point must be a valid build (else ConfigError naming it); a grid
    combination invalid only as a combination (e.g. d 16 with mults 8) is skipped and
    listed. Duplicates are dropped."""
    if isinstance(data, list):
        base, grid, points = {}, {}, data
    elif isinstance(data, dict):
        if set(data) & {"base", "grid", "points"}:
            extra = sorted(set(data) - {"base", "grid", "points"})
            if extra:
                raise ConfigError(f"{where}: unknown key(s) {extra}; expected base, grid, points")
            base, grid, points = data.get("base", {}), data.get("grid", {}), data.get("points", [])
        else:
            base, grid, points = {}, data, []
    else:
        raise ConfigError(f"{where}: expected an object (field -> list of values) or a list "
                          f"of points, found {type(data).__name__}")
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base: expected an object of config fields, found "
                          f"{type(base).__name__}")
    AccelConfig.from_dict(base, f"{where}: base", partial=True)
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: grid: expected an object (field -> list of values), "
                          f"found {type(grid).__name__}")
    if not isinstance(points, list):
        raise ConfigError(f"{where}: points: expected a list of objects, found "
                          f"{type(points).__name__}")
    for f, vals in grid.items():
        if f not in FIELDS:
            raise ConfigError(f"{where}: grid.{f}: unknown field; expected one of {list(FIELDS)}")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}: grid.{f}: expected a non-empty list of values, found "
                              f"{_where_value(vals)}")
    n = (math.prod(len(v) for v in grid.values()) if grid else 0) + len(points)
    if n > MAX_POINTS:
        raise ConfigError(f"{where}: expected at most {MAX_POINTS} points, found {n}")
    combos = [dict(zip(grid, vs)) for vs in itertools.product(*grid.values())] if grid else []
    out, seen, skipped = [], set(), []

    def add(cfg):
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    for c in combos:
        try:
            add(AccelConfig.from_dict({**base, **c}, "combination", partial=True))
        except ConfigError as e:
            skipped.append({"point": c, "reason": str(e)})
    for f, vals in grid.items():        # a value no combination can use is an error
        for i, v in enumerate(vals):
            with_v = [c for c in combos if c[f] == v]
            if all(any(s["point"] is c for s in skipped) for c in with_v):
                first = next(s for s in skipped if s["point"] is with_v[0])
                reason = first["reason"].removeprefix("combination: ")
                raise ConfigError(f"{where}: grid.{f}[{i}]: {_where_value(v)} makes no valid "
                                  f"build ({reason})")
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: points[{i}]: expected an object of config fields, "
                              f"found {type(p).__name__}")
        add(AccelConfig.from_dict({**base, **p}, f"{where}: points[{i}]", partial=True))
    if not out:
        why = f" ({len(skipped)} combinations invalid, e.g. {skipped[0]['reason']})" if skipped else ""
        raise ConfigError(f"{where}: expected at least one valid point, found none{why}")
    return out, skipped


def load_grid(path) -> tuple[list[AccelConfig], list[dict]]:
    return parse_grid(load_json(path, UserError, "a grid JSON file"), str(path))


def label(cfg: AccelConfig) -> str:
    """A short name of a build: the swept fields, defaults left out."""
    d, dflt = cfg.to_dict(), AccelConfig().to_dict()
    parts = [f"K{cfg.kmax}", "D" + "/".join(map(str, cfg.d_set)), f"x{cfg.mults}",
             f"bus{cfg.bus}", "+".join(cfg.modes)]
    if d["int_bits"] != dflt["int_bits"] and "int" in cfg.modes:
        parts.append("b" + "/".join(map(str, cfg.int_bits)))
    if "vq" in cfg.modes or "ssvq" in cfg.modes:
        if cfg.m_max != dflt["m_max"]:
            parts.append(f"m{cfg.m_max}")
        if cfg.coef_bits_max != dflt["coef_bits_max"]:
            parts.append(f"c{cfg.coef_bits_max}")
    for f in ("max_rows", "max_cols"):
        if d[f] != dflt[f]:
            parts.append(f"{f}={d[f]}")
    return " ".join(parts)


def synth_options(pnr: bool, synth: str = DEFAULT_SYNTH, freq_mhz: float = 100.0,
                  seed: int = 1, device: str = "auto") -> dict:
    return {"synth": synth, "pnr": bool(pnr), "freq_mhz": float(freq_mhz), "seed": seed,
            "device": device}


def point_hash(cfg: AccelConfig, sopts: dict) -> str:
    key = json.dumps({"v": CACHE_VERSION, "config": cfg.to_dict(), "synth": sopts},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ quality, plan
def load_quality(path, required: bool) -> dict:
    """config name -> {"mean_cosine": best over its rows, "trained": of that row}
    from an `ssvq quality` summary.json; rows without a config name the accelerator
    knows (fp32, faiss) are left out. A missing default file gives {}."""
    p = Path(path)
    if not p.exists() and not required:
        return {}
    data = load_json(p, UserError, "a quality summary.json")
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise UserError(f"{p}: rows: expected a list of quality rows, found "
                        f"{type(rows).__name__ if rows is not None else 'no rows'}")
    best = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserError(f"{p}: rows[{i}]: expected an object, found {type(r).__name__}")
        name, cos = r.get("config"), r.get("mean_cosine")
        try:
            name = LayerConfig.parse(name).name
        except ConfigError:
            continue
        if not isinstance(cos, (int, float)) or isinstance(cos, bool):
            raise UserError(f"{p}: rows[{i}].mean_cosine: expected a number, found {cos!r}")
        if name not in best or cos > best[name]["mean_cosine"]:
            best[name] = {"mean_cosine": float(cos), "trained": bool(r.get("trained"))}
    return best


def parse_plan(text: str | None) -> list[LayerConfig] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError(f"--plan: expected config names like ssvq-k256-d8,int4, found {text!r}")
    return [LayerConfig.parse(n, "--plan") for n in names]


def _runs(cfg: AccelConfig, lc: LayerConfig, layers) -> bool:
    try:
        for name, r, c in layers:
            cfg.check_layer(lc, r, c, name)
    except ConfigError:
        return False
    return True


def choose_plan(cfg: AccelConfig, layers, plan=None, quality=None, min_cosine=0.9,
                fixed=None) -> dict | None:
    """The compression plan of one build point: {"name", "rule", "layers": [(name,
    LayerConfig, rows, cols)]} or None when the build can run none of the candidates.
    layers: [(name, rows, cols)]; fixed: per-layer configs (from --images) used as they
    are; plan: a preference list; else auto (module docstring)."""
    from sim.golden import timing

    if fixed is not None:
        if all(_runs(cfg, lc, [(n, r, c)]) for (n, r, c), lc in zip(layers, fixed)):
            names = {lc.name for lc in fixed}
            return {"name": names.pop() if len(names) == 1 else "images (mixed)",
                    "rule": "images", "layers": [(n, lc, r, c) for (n, r, c), lc
                                                 in zip(layers, fixed)]}
        return None
    if plan is None and quality:
        cands = [LayerConfig.parse(n) for n, q in sorted(quality.items())
                 if q["mean_cosine"] >= min_cosine]
        runnable = [lc for lc in cands if _runs(cfg, lc, layers)]
        if not runnable:
            return None

        from sim.energy import model_energy

        def cycles(lc):
            return sum(timing(cfg, lc, r, c).counters["cycles"] for _, r, c in layers)
        cyc = {lc.name: cycles(lc) for lc in runnable}
        fast = [lc for lc in runnable if cyc[lc.name] <= (1 + CYCLE_TOLERANCE) * min(cyc.values())]
        best = min(fast, key=lambda lc: (
            model_energy(cfg, [(n, lc, r, c) for n, r, c in layers]).total_pj,
            -quality[lc.name]["mean_cosine"], lc.name))
        rule = (f"auto: mean cosine >= {min_cosine}, fewest cycles (within "
                f"{CYCLE_TOLERANCE:.0%}), then least energy")
    else:
        ladder = plan if plan is not None else [LayerConfig.parse(n) for n in FALLBACK_LADDER]
        best = next((lc for lc in ladder if _runs(cfg, lc, layers)), None)
        if best is None:
            return None
        rule = ("--plan: first the build runs" if plan is not None
                else "fallback ladder (no quality file): first the build runs")
    return {"name": best.name, "rule": rule, "layers": [(n, best, r, c) for n, r, c in layers]}


# ------------------------------------------------------------------ one point
def point_metrics(cfg: AccelConfig, plan: dict, clock_mhz: float) -> dict:
    """Cost-model, throughput and energy figures of one build running `plan`."""
    from sim.cost import model_cost
    from sim.energy import model_energy

    mc = model_cost(cfg, plan["layers"])
    en = model_energy(cfg, plan["layers"])
    wpc = mc.n_weights / mc.cycles
    t_token_s = mc.cycles / (clock_mhz * 1e6)
    return {"cycles": mc.cycles, "weights": mc.n_weights, "weights_per_cycle": wpc,
            "bits_per_weight": mc.bits_per_weight, "bus_utilisation": mc.bus_utilisation,
            "stream_bits": mc.total_bits, "clock_mhz": clock_mhz,
            "weights_per_s": wpc * clock_mhz * 1e6, "token_us": t_token_s * 1e6,
            "tokens_per_s": 1.0 / t_token_s,
            "energy_pj": en.total_pj, "energy_uj_per_token": en.total_pj * 1e-6,
            "energy_parts_pj": en.pj, "access_counts": en.counts,
            "pj_per_weight": en.total_pj / mc.n_weights}


def _resolve(spec: str):
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


def evaluate_point(cfg_dict: dict, opts: dict, cached_synth: dict | None = None) -> dict:
    """One point, everything: plan, synthesis (unless `cached_synth`), cost, energy.
    Runs in a worker process or a Ray task; returns plain JSON data."""
    t0 = time.monotonic()
    cfg = AccelConfig.from_dict(cfg_dict, "point")
    layers = [tuple(x) for x in opts["layers"]]
    fixed = [LayerConfig.from_dict(d) for d in opts["fixed"]] if opts.get("fixed") else None
    plan_list = [LayerConfig.parse(n) for n in opts["plan"]] if opts.get("plan") else None
    plan = choose_plan(cfg, layers, plan_list, opts.get("quality") or {},
                       opts.get("min_cosine", 0.9), fixed)
    sopts = opts["synth_opts"]
    res = {"hash": point_hash(cfg, sopts), "label": label(cfg), "config": cfg.to_dict(),
           "plan": plan and {"name": plan["name"], "rule": plan["rule"]}, "cached": False,
           "error": None, "synth": None}
    if plan is None:
        res["error"] = "no plan: the build runs none of the candidate configs"
        return res
    synth = cached_synth
    if synth is None:
        fn = _resolve(sopts["synth"])
        work = Path(opts["work"]) / res["hash"]
        try:
            synth = fn(cfg, work, device=sopts["device"], progress=lambda *_: None,
                       pnr=sopts["pnr"], freq_mhz=sopts["freq_mhz"], seed=sopts["seed"])
        except Exception as e:          # a failed tool run is this point's result
            res["error"] = f"synthesis failed: {type(e).__name__}: {str(e).splitlines()[0]}"
            return res
        synth = {k: synth.get(k) for k in ("resources", "fmax_mhz", "target_mhz",
                                           "timing_met", "device", "wall_s", "tools")}
        synth["resources"] = {k: v for k, v in synth["resources"].items() if k != "cells"}
    else:
        res["cached"] = True
    res["synth"] = synth
    fmax = synth.get("fmax_mhz") if sopts["pnr"] else None
    clock = fmax if fmax else opts["clock_mhz"]
    res["clock_source"] = "nextpnr Fmax" if fmax else "assumed (no place and route)"
    res["metrics"] = point_metrics(cfg, plan, clock)
    q = (opts.get("quality") or {}).get(plan["name"])
    res["fidelity"] = q
    res["seconds"] = round(time.monotonic() - t0, 2)
    return res


# ------------------------------------------------------------------ Pareto
def pareto(items, cost, gain) -> list[int]:
    """Indices of the items on the Pareto front: lower cost(item) and higher
    gain(item) are better; an item is on it unless another is at least as good on
    both and better on one. Items whose cost or gain is None are left out."""
    pts = [(i, cost(x), gain(x)) for i, x in enumerate(items)]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    front = []
    for i, c, g in pts:
        if not any((c2 <= c and g2 >= g) and (c2 < c or g2 > g) for _, c2, g2 in pts):
            front.append(i)
    return sorted(front, key=lambda i: (cost(items[i]), -gain(items[i])))


def _lut(p):
    return (p.get("synth") or {}).get("resources", {}).get("LUT4") if p.get("metrics") else None


def _energy(p):
    return p["metrics"]["energy_uj_per_token"] if p.get("metrics") else None


def _tps(p):
    return p["metrics"]["tokens_per_s"] if p.get("metrics") else None


# ------------------------------------------------------------------ running
def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _short(r: dict) -> str:
    if r.get("error"):
        return r["error"]
    m, res = r["metrics"], r["synth"]["resources"]
    return (f"{r['plan']['name']}, LUT4 {res['LUT4']}, MULT {res['MULT18X18D']}, "
            f"{m['cycles']} cycles/token, {m['tokens_per_s']:.0f} tok/s at "
            f"{m['clock_mhz']:g} MHz, {m['energy_uj_per_token']:.1f} uJ/token")


def _write_atomic(path: Path, data: bytes | str):
    tmp = path.with_name(f".{path.name}.tmp")
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    os.replace(tmp, path)


def _submit_local(jobs):
    from concurrent.futures import ProcessPoolExecutor, as_completed

    def run(tasks):
        if jobs == 1:
            for key, args in tasks:
                yield key, evaluate_point(*args)
            return
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            futs = {ex.submit(evaluate_point, *args): key for key, args in tasks}
            for f in as_completed(futs):
                yield futs[f], f.result()
    return run


def _submit_ray(jobs):
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray: expected the ray package (pip install ray), found it "
                        "not importable") from None

    def run(tasks):
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
        try:
            path = os.pathsep.join([str(ROOT)] + [p for p in
                                                  os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
            remote = ray.remote(num_cpus=1)(evaluate_point).options(
                runtime_env={"env_vars": {"PYTHONPATH": path}})
            refs = {remote.remote(*args): key for key, args in tasks}
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    yield refs.pop(ref), ray.get(ref)
        finally:
            if started:
                ray.shutdown()
    return run


def run_sweep(points: list[AccelConfig], out, *, layers=MINILM_LAYERS, fixed=None, plan=None,
              quality=None, min_cosine=0.9, pnr=False, clock_mhz=100.0, backend="local",
              jobs=2, work="build/sweep", synth=DEFAULT_SYNTH, progress=print,
              meta=None) -> dict:
    """Runs every point (cache first), writes OUT/points/<hash>.json per synthesis and
    then sweep.json, sweep.md and the plots. Returns the sweep.json data."""
    if backend not in ("local", "ray"):
        raise UserError(f"--backend: expected local or ray, found {backend!r}")
    if type(jobs) is not int or jobs < 1:
        raise UserError(f"--jobs: expected a number of workers >= 1, found {jobs!r}")
    if not clock_mhz > 0:
        raise UserError(f"--clock-mhz: expected a frequency > 0, found {clock_mhz}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: expected a folder, found a file")
    submit = _submit_ray(jobs) if backend == "ray" else _submit_local(jobs)
    sopts = synth_options(pnr, synth)
    opts = {"layers": [list(x) for x in layers], "plan": [p.name for p in plan] if plan else None,
            "fixed": [lc.to_dict() for lc in fixed] if fixed else None,
            "quality": quality or {}, "min_cosine": min_cosine, "synth_opts": sopts,
            "clock_mhz": clock_mhz, "work": str(Path(work).resolve())}
    pdir = out / "points"
    pdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results = [None] * len(points)
    tasks, n_done = [], 0
    for i, cfg in enumerate(points):
        h = point_hash(cfg, sopts)
        cache = pdir / f"{h}.json"
        cached = None
        if cache.exists():
            try:
                c = json.loads(cache.read_text())
                if c.get("hash") == h and c.get("config") == cfg.to_dict():
                    cached = c["synth"]
            except (OSError, ValueError, KeyError, TypeError):
                cached = None                      # a damaged cache entry is redone
        if cached is not None:
            results[i] = evaluate_point(cfg.to_dict(), opts, cached)
            n_done += 1
            progress(f"[{n_done}/{len(points)}] {results[i]['label']}: cached; "
                     f"{_short(results[i])}")
        else:
            tasks.append((i, (cfg.to_dict(), opts, None)))
    n_new, t_new = len(tasks), time.monotonic()
    for k, (i, r) in enumerate(submit(tasks)):
        results[i] = r
        n_done += 1
        if r.get("synth") and not r.get("cached"):
            _write_atomic(pdir / f"{r['hash']}.json", json.dumps(
                {"hash": r["hash"], "config": r["config"], "synth_opts": sopts,
                 "synth": r["synth"]}, indent=1))
        el = time.monotonic() - t_new
        eta = el / (k + 1) * (n_new - k - 1)
        progress(f"[{n_done}/{len(points)}] {r['label']}: {_short(r)}; elapsed "
                 f"{_fmt_s(time.monotonic() - t0)}, ETA {_fmt_s(eta)}")
    summary = {
        "model": (meta or {}).get("model", "minilm"), "meta": meta or {},
        "layers": len(layers), "weights": sum(r * c for _, r, c in layers),
        "pnr": pnr, "clock_mhz_assumed": None if pnr else clock_mhz, "backend": backend,
        "jobs": jobs, "synth": sopts,
        "plan_rule": (f"--plan {','.join(opts['plan'])}" if plan else "images" if fixed else
                      f"auto (mean cosine >= {min_cosine}; fewest cycles within {CYCLE_TOLERANCE:.0%}, then least energy)" if quality else
                      f"fallback ladder {','.join(FALLBACK_LADDER)}"),
        "wall_s": round(time.monotonic() - t0, 1),
        "synth_seconds": round(sum(((p.get("synth") or {}).get("wall_s") or {}).get("total", 0)
                                   for p in results), 1),
        "points": results,
    }
    from sim.energy import PJ, SOURCE
    summary["energy_table_pj"], summary["energy_source"] = PJ, SOURCE
    summary["pareto"] = {"area": [results[i]["hash"] for i in pareto(results, _lut, _tps)],
                         "energy": [results[i]["hash"] for i in pareto(results, _energy, _tps)]}
    write_outputs(summary, out)
    return summary


# ------------------------------------------------------------------ outputs
def _table(summary: dict) -> list[str]:
    pa, pe = set(summary["pareto"]["area"]), set(summary["pareto"]["energy"])
    clock = ("nextpnr Fmax" if summary["pnr"] else
             f"{summary['clock_mhz_assumed']:g} MHz assumed (no --pnr; Fmax not measured)")
    lines = [f"| # | build | plan | bits/weight | LUT4 | FF | MULT18 | DP16KD | clock MHz "
             f"| cycles/token | weights/cycle | Gweights/s | us/token | tokens/s | uJ/token "
             f"| cosine | Pareto |",
             "|" + "---|" * 17]
    for n, p in enumerate(summary["points"], 1):
        if not p.get("metrics"):
            lines.append(f"| {n} | {p['label']} | {p['plan']['name'] if p['plan'] else '—'} | "
                         + " | ".join(["—"] * 13) + f" | {p['error']} |")
            continue
        m, r = p["metrics"], p["synth"]["resources"]
        q = p.get("fidelity")
        cos = f"{q['mean_cosine']:.4f}{' (QAT)' if q['trained'] else ''}" if q else ""
        mark = "/".join(x for x, s in (("area", pa), ("energy", pe)) if p["hash"] in s)
        clk = f"{m['clock_mhz']:.1f}" if summary["pnr"] else f"{m['clock_mhz']:g}*"
        lines.append(
            f"| {n} | {p['label']} | {p['plan']['name']} | {m['bits_per_weight']:.3f} | "
            f"{r['LUT4']:,} | {r['TRELLIS_FF']:,} | {r['MULT18X18D']} | {r['DP16KD']} | {clk} | "
            f"{m['cycles']:,} | {m['weights_per_cycle']:.2f} | {m['weights_per_s'] / 1e9:.3f} | "
            f"{m['token_us']:.1f} | {m['tokens_per_s']:,.0f} | {m['energy_uj_per_token']:.2f} | "
            f"{cos} | {mark} |")
    lines.append("")
    lines.append(f"clock: {clock}." + (" `*` = assumed clock." if not summary["pnr"] else ""))
    return lines


def write_markdown(summary: dict) -> str:
    from sim.energy import PJ

    s = summary
    L = [f"# Design-space sweep: {s['model']} ({s['layers']} layers, {s['weights']:,} weights)",
         "",
         f"{len(s['points'])} build points, {s['backend']} backend, {s['jobs']} jobs, "
         f"{s['wall_s']:.0f} s wall this run ({sum(p['cached'] for p in s['points'])} points from "
         f"the cache; the points' synthesis took {s['synth_seconds']:.0f} s of tool time "
         f"when they ran). One token = one pass over "
         f"all weights (layers back to back, each paying its header/codebook/params/acts "
         f"loads); cycles from the cost model (sim.cost / sim.golden.timing, equal to the "
         f"RTL's counters).",
         "",
         f"- area: Yosys synth_ecp5 of `ssvq_accel` (hw.synth); "
         + ("Fmax: nextpnr-ecp5 (`--pnr`)." if s["pnr"] else
            f"no place and route (`--pnr` not given): throughput at an assumed "
            f"{s['clock_mhz_assumed']:g} MHz, the synthesis target, not a measured Fmax."),
         f"- plan per point: {s['plan_rule']}.",
         f"- energy: access counts x per-access energies (sim/energy.py): "
         + ", ".join(f"{k} {v:g} pJ" for k, v in PJ.items())
         + f"; {s['energy_source']}. DRAM = every bit of every stream.",
         "- cosine: best mean cosine of the plan's config in the MiniLM quality run "
         "(reports/measured/quality-minilm), blank where it has no row.",
         "- Pareto: tokens/s against LUT4 (`area`) and against energy per token (`energy`); "
         "plots pareto_area.png, pareto_energy.png.",
         "", *_table(s)]
    skipped = s.get("meta", {}).get("skipped") or []
    if skipped:
        L += ["", f"{len(skipped)} grid combinations skipped as invalid builds:", ""]
        L += [f"- {json.dumps(x['point'])}: {x['reason']}" for x in skipped]
    return "\n".join(L) + "\n"


def _plot(summary: dict, path: Path, cost, xlabel: str, key: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in summary["points"] if cost(p) is not None]
    front = set(summary["pareto"][key])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter([cost(p) for p in pts], [_tps(p) for p in pts], c="tab:gray", s=25,
               label="build points")
    fp = sorted((p for p in pts if p["hash"] in front), key=cost)
    ax.step([cost(p) for p in fp], [_tps(p) for p in fp], "-", c="tab:red", where="post")
    ax.plot([cost(p) for p in fp], [_tps(p) for p in fp], "o", c="tab:red", ms=7,
            label="Pareto front")
    at = {}                                 # points at the same place share one label
    for p in fp:
        at.setdefault((cost(p), _tps(p)), []).append(f"{p['label']}: {p['plan']['name']}")
    for (x, y), names in at.items():
        ax.annotate("\n".join(names), (x, y), fontsize=6, xytext=(4, -4),
                    textcoords="offset points", va="top")
    clock = "Fmax (nextpnr)" if summary["pnr"] else f"{summary['clock_mhz_assumed']:g} MHz assumed"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"MiniLM tokens/s ({clock})")
    ax.set_title(f"{summary['model']}: throughput vs {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(summary: dict, out: Path):
    _plot(summary, out / "pareto_area.png", _lut, "LUT4 (Yosys synth_ecp5)", "area")
    _plot(summary, out / "pareto_energy.png", _energy, "energy per token (uJ, sim/energy.py)",
          "energy")
    _write_atomic(out / "sweep.md", write_markdown(summary))
    _write_atomic(out / "sweep.json", json.dumps(summary, indent=1))


# ------------------------------------------------------------------ CLI
def sweep_cmd(args) -> int:
    if args.model != "minilm" and not args.images:
        raise UserError(f"--model: expected minilm (or --images DIR), found {args.model!r}")
    points, skipped = load_grid(args.grid)
    plan = parse_plan(args.plan)
    layers, fixed, model = MINILM_LAYERS, None, args.model
    if args.images:
        from ssvq.image import read_images
        imgs = read_images(args.images)
        ents = imgs.manifest["layers"]
        layers = tuple((e["name"], e["rows"], e["cols"]) for e in ents)
        fixed = None if plan else [imgs.layer_config(e["name"]) for e in ents]
        model = f"{args.model} (images {args.images})"
    if not 0.0 <= args.min_cosine <= 1.0:
        raise UserError(f"--min-cosine: expected 0..1, found {args.min_cosine}")
    quality = load_quality(args.quality or DEFAULT_QUALITY, required=bool(args.quality))
    t0 = time.monotonic()

    def progress(msg):
        print(f"[{_fmt_s(time.monotonic() - t0):>7}] {msg}", flush=True)
    progress(f"sweep: {len(points)} points ({len(skipped)} invalid combinations skipped), "
             f"{'yosys + nextpnr' if args.pnr else 'yosys only'}, {args.backend} backend, "
             f"{args.jobs} jobs, out {args.out}")
    s = run_sweep(points, args.out, layers=layers, fixed=fixed, plan=plan, quality=quality,
                  min_cosine=args.min_cosine, pnr=args.pnr, clock_mhz=args.clock_mhz,
                  backend=args.backend, jobs=args.jobs, work=args.work, progress=progress,
                  meta={"model": model, "grid": str(args.grid), "skipped": skipped})
    bad = [p for p in s["points"] if p.get("error") and p.get("plan")]
    progress(f"sweep: wrote {Path(args.out) / 'sweep.md'}, sweep.json, pareto_area.png, "
             f"pareto_energy.png ({s['wall_s']:.0f} s)")
    if bad:
        progress(f"sweep: {len(bad)} point(s) failed: " + "; ".join(
            f"{p['label']}: {p['error']}" for p in bad))
        return 1
    return 0
