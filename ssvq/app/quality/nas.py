"""The orchestration of the `nas` search (compress.nas): the accelerator build
the candidates are costed on, the cost table from sim.golden.timing on that
build (compress/ may not import sim/, so the table is computed here and passed
in), and the digits rows of `ssvq quality --model digits --methods nas`.

Build: AccelConfig.covering of every (candidate, layer) pair (so any choice
runs on it), widened by sim.cost.baseline_build with the reference width
(int8) the budget is a fraction of. The images are written with this same
build, so the cycles in the table are the cycles of the written images.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from compress.nas import CANDIDATES, NAS, NASModel, search_meta
from compress.run import accel_config_for
from compress.train import fit
from sim import golden
from sim.cost import baseline_build, model_cost
from ssvq.config import AccelConfig, LayerConfig

DEFAULT_FRACTIONS = (0.6, 0.4)
SEARCH_LR = {"arch_lr": 5e-2, "latent_lr": 3e-2}


def linear_shapes(model: nn.Module) -> list[tuple[str, int, int]]:
    """(name, rows, cols) of every nn.Linear (rows = out_features)."""
    return [(n, m.out_features, m.in_features) for n, m in model.named_modules()
            if isinstance(m, nn.Linear)]


def search_build(shapes, candidates=CANDIDATES, mults: int = 32, bus: int = 64,
                 reference: str = "int8") -> AccelConfig:
    cfg = accel_config_for([(n, LayerConfig.parse(c), r, k) for n, r, k in shapes
                            for c in candidates], mults, bus)
    return baseline_build(cfg, [reference])


def cost_table(cfg: AccelConfig, shapes, candidates=CANDIDATES) -> dict[str, list[int]]:
    """{layer: [cycles of each candidate]}: sim.golden.timing's cycle counter (the
    RTL's) of the layer's image in that configuration on build cfg."""
    return {n: [golden.timing(cfg, LayerConfig.parse(c), r, k).counters["cycles"]
                for c in candidates] for n, r, k in shapes}


def reference_cycles(cfg: AccelConfig, shapes, reference: str = "int8") -> int:
    lc = LayerConfig.parse(reference)
    return sum(golden.timing(cfg, lc, r, k).counters["cycles"] for _, r, k in shapes)


def nas_spec(base: nn.Module, fraction: float, candidates=CANDIDATES, penalty: float = 1.0,
             seed: int = 0, mults: int = 32, bus: int = 64):
    """(NAS spec, build, int8 cycles) for budget = fraction x the int8 cycles."""
    shapes = linear_shapes(base)
    cfg = search_build(shapes, candidates, mults, bus)
    ref = reference_cycles(cfg, shapes)
    spec = NAS(candidates=tuple(candidates), costs=cost_table(cfg, shapes, candidates),
               budget=fraction * ref, penalty=penalty, seed=seed)
    return spec, cfg, ref


def run_digits_nas(out: Path, base, X, Y, xte, yte, fractions, row_seconds: float,
                   measure, seed: int = 0, candidates=CANDIDATES) -> list[dict]:
    """One row per budget fraction: search for row_seconds, argmax (+ repair),
    fine-tune the chosen layers for row_seconds / 2, export; `measure(qm, row)`
    is the --methods measurement (accuracy, bits, images round trip)."""
    from compress.models import accuracy

    def batches(i, bs=64):
        g = torch.Generator().manual_seed(seed * 1000003 + i)
        idx = torch.randint(0, len(X), (bs,), generator=g)
        return X[idx], Y[idx]

    def ce(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    rows = []
    for frac in fractions:
        t0 = time.perf_counter()
        spec, cfg, ref = nas_spec(base, frac, candidates, seed=seed)
        torch.manual_seed(seed)
        nm = NASModel(base, spec)
        res = fit(nm, ce, batches, budget_s=row_seconds, lr=1e-3, lr_groups=SEARCH_LR,
                  progress=None)
        nm.choose()
        meta = search_meta(nm)
        searched_acc = accuracy(nm.to_float(), xte, yte)
        qm = nm.finalize()
        torch.manual_seed(seed)
        ft = fit(qm, ce, batches, budget_s=row_seconds / 2, lr=1e-3,
                 lr_groups={"latent_lr": SEARCH_LR["latent_lr"]}, progress=None)
        label = f"budget={frac:g}"
        choice = nm.choice()
        configs = set(choice.values())
        row = {"method": "nas", "config": configs.pop() if len(configs) == 1 else "mixed",
               "budget_fraction": frac, "trained": True, "choice": choice,
               "budget_cycles": spec.budget, "int8_cycles": ref,
               "cycles": int(nm.chosen_cycles()), "feasible": nm.feasible,
               "argmax_cycles": int(nm.argmax_cycles), "repairs": meta["repairs"],
               "probabilities": meta["probabilities"], "accuracy_searched": searched_acc,
               "steps": res.steps + ft.steps, "search_steps": res.steps,
               "finetune_steps": ft.steps, "build": cfg.to_dict()}
        shapes = {n: (r, k) for n, r, k in linear_shapes(base)}
        mc = model_cost(cfg, [(n, c, *shapes[n]) for n, c in choice.items()])
        assert mc.cycles == row["cycles"], (mc.cycles, row["cycles"])
        measure(qm, row)
        name = f"nas-{label.replace('=', '')}"
        plan_path = out / "plans" / f"{name}.json"
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(nm.plan().to_dict(), indent=1) + "\n")
        d = out / "images" / name
        qm.write_images(d, qm.capture(lambda m: m(X)), accel=cfg,
                        meta={"model": "digits", "nas": dict(meta, search_steps=res.steps,
                              finetune_steps=ft.steps, search_seconds=row_seconds,
                              finetune_seconds=row_seconds / 2, int8_cycles=ref,
                              budget_fraction=frac, plan_file=str(plan_path.relative_to(out)),
                              cost_model="sim.golden.timing counters['cycles'] on the "
                                         "manifest's accelerator config")})
        row.update(images=str(d.relative_to(out)), plan=str(plan_path.relative_to(out)),
                   seconds=time.perf_counter() - t0)
        rows.append(row)
    return rows


# MiniLM: candidates near 2 and 3 bits/weight (int2's and SSVQ/VQ's cycles are
# about 0.27 of int8's on every MiniLM shape, int3's 0.39, int4's 0.51), and a
# budget of 0.3 x the int8 cycles, so a plan may keep a few layers at int3/int4
# only by putting the rest at the 2-bit candidates.
MINILM_CANDIDATES = ("int4", "int3", "int2", "ssvq-k256-d8", "vq-k256-d4")
MINILM_FRACTION = 0.3
SEARCH_SHARE = 2 / 3              # of the row's budget; the fine-tuning has the rest
# --methods rows: name -> (budget fraction of the int8 cycles, candidates). nas-3b:
# about 3 bits/weight (on MiniLM's shapes int3's cycles are 0.38-0.39 of int8's and
# SSVQ K=256 D=4's 0.38-0.40, both bus-bound at 3 bits a weight), with SSVQ D=4
# among the candidates.
MINILM_ROWS = {"nas": (MINILM_FRACTION, MINILM_CANDIDATES),
               "nas-3b": (0.4, MINILM_CANDIDATES + ("ssvq-k256-d4",))}


def search_minilm(model: nn.Module, budget_s: float, train_fn, lr: dict, seed: int = 0,
                  fraction: float = MINILM_FRACTION, candidates=MINILM_CANDIDATES,
                  progress=None):
    """The MiniLM `nas` row: search for SEARCH_SHARE of budget_s, choose (+ repair),
    fine-tune the chosen layers for the rest. train_fn(qm, budget_s, lr) -> (qm,
    fit result) is the experiment's training loop (its loss and batches).
    Returns (fine-tuned QuantizedModel, row fields, build, manifest meta, plan)."""
    spec, cfg, ref = nas_spec(model, fraction, candidates, seed=seed)
    if progress:
        progress(f"  nas: {len(candidates)} candidates {list(candidates)}, budget "
                 f"{fraction:g} x int8 = {spec.budget:.0f} cycles")
    torch.manual_seed(seed)
    nm = NASModel(model, spec)
    search_lr = {"lr": lr["lr"], "lr_groups": {**lr["lr_groups"],
                                               "arch_lr": SEARCH_LR["arch_lr"]}}
    nm, res = train_fn(nm, budget_s * SEARCH_SHARE, search_lr)
    nm.choose()
    meta = search_meta(nm)
    qm = nm.finalize()
    torch.manual_seed(seed)
    qm, ft = train_fn(qm, budget_s * (1 - SEARCH_SHARE), lr)
    choice = nm.choice()
    shapes = {n: (r, k) for n, r, k in linear_shapes(model)}
    mc = model_cost(cfg, [(n, c, *shapes[n]) for n, c in choice.items() if n in shapes])
    assert mc.cycles == int(nm.chosen_cycles()), (mc.cycles, nm.chosen_cycles())
    counts: dict[str, int] = {}
    for c in choice.values():
        counts[c] = counts.get(c, 0) + 1
    row = {"budget_fraction": fraction, "choice": choice, "choice_counts": counts,
           "budget_cycles": spec.budget, "int8_cycles": ref, "cycles": mc.cycles,
           "feasible": nm.feasible, "argmax_cycles": int(nm.argmax_cycles),
           "repairs": meta["repairs"], "steps": res.steps + ft.steps,
           "search_steps": res.steps, "finetune_steps": ft.steps,
           "train_minutes": (res.seconds + ft.seconds) / 60, "build": cfg.to_dict()}
    meta = dict(meta, search_steps=res.steps, finetune_steps=ft.steps, int8_cycles=ref,
                budget_fraction=fraction,
                cost_model="sim.golden.timing counters['cycles'] on the manifest's "
                           "accelerator config")
    # one trajectory: the fine-tuning's steps and seconds continue the search's
    log = res.log + [dict(r, step=r.get("step", 0) + res.steps,
                          seconds=r.get("seconds", 0.0) + res.seconds) for r in ft.log]
    return qm, row, cfg, meta, nm.plan(), log
