"""The MiniLM experiment of `ssvq quality`: post-training and distilled rows
of all-MiniLM-L6-v2's 36 encoder layers and the markdown report."""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from compress.cosvq import CosVQ
from compress.diffq import DiffQ
from compress.dkm import DKM
from compress.lr2vq import LR2VQ, rank_estimate
from compress.qsd import QSD
from compress.run import write_model_images
from compress.train import SSVQ, VQ, QuantizedModel, Uniform, fit, plan_overrides
from ssvq.app.quality import nas
from ssvq.app.quality.baselines import faiss_anchor
from ssvq.app.quality.checks import check_images, check_rtl
from ssvq.app.quality.corpus import build_corpus
from ssvq.app.quality.hwcols import integer_forward, no_images, speedups
from ssvq.app.quality.minilm_task import MiniLMTask
from ssvq.app.quality.pareto import band_verdicts, pareto_front, verdict
from ssvq.app.quality.plots import (freezing_summary, plot_freezing, plot_pareto,
                                    plot_speedup)
from ssvq.app.quality.runtime import say, set_threads
from ssvq.app.quality.tables import table
from ssvq.config import AccelConfig
from ssvq.errors import UserError


def minilm_specs() -> dict:
    return {
        "ssvq-k256-d8": ("ssvq", SSVQ(k=256, d=8)),
        "vq-k256-d4": ("vq", VQ(k=256, d=4)),
        "ssvq-k256-d4": ("ssvq", SSVQ(k=256, d=4)),
        "ssvq-k256-d4-gptq": ("ssvq", SSVQ(k=256, d=4, init="gptq")),
        "ssvq-k256-d8-reassign": ("ssvq", SSVQ(k=256, d=8, codes="reassign", reassign_every=50)),
        "ssvq-k256-d8-gptq": ("ssvq", SSVQ(k=256, d=8, init="gptq")),
        "ssvq-mixed-gptq": ("ssvq", SSVQ(k=256, d=8, init="gptq")),
        "int8": ("int8", Uniform(8)),
        "int4": ("int4", Uniform(4)),
        "int3": ("int3", Uniform(3)),
    }


# Training sentences whose input statistics the init="gptq" starts use. Held-out
# mean cosine of the post-training SSVQ K=256 D=8 start (1 thread, seed 0): 256
# sentences 0.896, 1024 0.907, 2048 0.909, 4096 0.909; 1024 costs about a minute.
GPTQ_CALIB_SENTENCES = 1024


def gptq_calibration(task: MiniLMTask, sentences: list[str], seed: int = 0):
    """QuantizedModel's calibration= for init="gptq" specs (run only by them): a
    seeded choice of GPTQ_CALIB_SENTENCES training sentences through the float
    model, sorted by length (MiniLMTask.calibration_run)."""
    rng = np.random.default_rng([seed, 1])
    pick = list(rng.choice(sentences, size=min(GPTQ_CALIB_SENTENCES, len(sentences)),
                           replace=False))
    return lambda model: task.calibration_run(pick)(model)


# Per-layer plans (compress.plan JSON, the form `ssvq compress --config` reads) of
# the specs that have one: each layer trains the config its plan resolves, with the
# spec's training options (compress.train.plan_overrides).
#
# ssvq-mixed-gptq moves bits to where they pay, from post-training sensitivity
# (GPTQ SSVQ starts, held-out mean cosine, 1 thread; all layers K=256 D=8: 0.9069 at
# 2.087 bits/weight). One layer at a time to D=4 (3 bits/weight, +0.013 bits/weight
# for a 384 x 384 layer): block 5's attention output +0.0100 and value +0.0052, its
# query +0.0001 and key +0.0007; a whole block's attention to D=4 (+0.053): block 5
# +0.0167, block 4 +0.0033, block 0 +0.0024; block 5's FFN-in or FFN-out to D=4 (+0.055)
# +0.0044 / +0.0032. Fewer bits: every query and key at K=64 (-0.056 bits/weight)
# -0.0036, at K=32 (-0.079) -0.0072. This plan: 0.9189 at 2.057 bits/weight; distilled
# 6 min beside the uniform plan on the same machine (one thread each, 476 steps each):
# 0.9419 against 0.9330.
MINILM_SSVQ_PLAN = {"global": {"method": "ssvq", "k": 256, "d": 8},
                    "layers": {"*.attention.self.query": {"k": 64},
                               "*.attention.self.key": {"k": 64},
                               "encoder.layer.5.attention.self.value": {"d": 4},
                               "encoder.layer.5.attention.output.dense": {"d": 4}}}
PLANS = {"ssvq-mixed-gptq": MINILM_SSVQ_PLAN}

# --methods names of the table: each method's strongest MiniLM row
METHOD_ALIASES = {"ssvq": "ssvq-mixed-gptq", "vq": "vq-k256-d4"}


MINILM_LR = {"lr": 1e-3, "lr_groups": {"latent_lr": 5e-3, "codebook_lr": 3e-3,
                                       "scale_lr": 3e-3, "shadow_lr": 2e-5, "other_lr": 1e-4}}


def _lr(**groups) -> dict:
    """MINILM_LR with some groups' rates replaced."""
    return {"lr": MINILM_LR["lr"], "lr_groups": {**MINILM_LR["lr_groups"], **groups}}


# The training methods of ssvq.app.quality.methods at MiniLM-sized
# configurations near 2 bits/weight: name -> (config, spec, learning rates).
# Rates: codebook / scale / other as MINILM_LR. cosvq's and dkm's latents are
# weights in units of the row scale, moved continuously (not sign latents
# whose only effect is a flip): digits gives them a third of SSVQ's latent
# rate, so a third of MiniLM's SSVQ rate here. diffq's shadow weights are
# float weights like the uniform QAT shadows (MINILM_LR shadow), its bit
# logits unit-free (digits' 5e-2). lr2vq's projection map takes the codebook
# rate. qsd's dense codes are integer after every projection, so a step moves
# an entry only when it crosses a rounding boundary (digits' 0.3).
def minilm_methods() -> dict:
    return {
        # cosvq at 2 bits/weight: a 4-bit code and a 4-bit coefficient per 4 weights
        # (K=256 D=8 c4, 1.59 bits/weight, held-out 0.744 in the stop-15 table)
        "cosvq": ("K=16 D=4 c4", CosVQ(k=16, d=4, coef_bits=4), _lr(latent_lr=2e-3)),
        # dkm attends to each vector's 16 nearest codewords (compress.dkm): on
        # MiniLM's K=256 D=4 start the dense weight outside them is at most 2.5e-8
        # (block 0 query, block 5 FFN-out), and a step takes 9 s on 2 threads against
        # 76 s and 12 GB dense.
        "dkm": ("K=256 D=4 iters=1 cand16", DKM(k=256, d=4, iters=1, candidates=16),
                _lr(latent_lr=2e-3)),
        "diffq": ("penalty=0.1", DiffQ(penalty=0.1), _lr(bits_lr=5e-2)),
        # lr2vq's rank r (d~) is chosen by its estimate before training (lr2vq_rank)
        "lr2vq": ("K=256 D=4", LR2VQ(k=256, d=4), _lr(map_lr=3e-3)),
        "qsd": ("K=16 D=8 m2 c4", QSD(k=16, d=8, coef_bits=4), _lr(latent_lr=0.3)),
        # about 3 bits/weight, same rates. dkm and lr2vq export plain VQ (no
        # coefficients), which K <= kmax 256 and D >= 4 cap at 2 bits/weight, so they
        # have no 3-bit row on the default build; qsd at K=256 D=8 m2 c4 (also 3
        # bits) would keep a 512-wide dense code per vector with its Adam state
        # (about 8 GB for MiniLM), so its 3-bit row is K=16 D=4 with 2-bit coefficients.
        "cosvq-3b": ("K=256 D=4 c4", CosVQ(k=256, d=4, coef_bits=4), _lr(latent_lr=2e-3)),
        "qsd-3b": ("K=16 D=4 m2 c2", QSD(k=16, d=4, coef_bits=2), _lr(latent_lr=0.3)),
    }


def lr2vq_rank(task: MiniLMTask, spec: LR2VQ, progress=say) -> tuple[LR2VQ, list[dict]]:
    """LR2VQ's rank chosen before fine-tuning as the paper does: the rank r of
    least estimated error (low-rank part + clustering part, compress.lr2vq.
    rank_estimate over the 36 layers) among 1 .. D; the spec at that rank and
    the estimate of every r."""
    t0 = time.perf_counter()
    est = rank_estimate([w for _, w, _ in task.lm.layers], spec.k, spec.d,
                        range(1, spec.d + 1), spec.seed)
    best = min(est, key=lambda e: e["total"])["rank"]
    progress(f"  lr2vq rank estimate (relative error, low-rank + clustering): " + ", ".join(
        f"r={e['rank']} {e['total']:.4f}" for e in est)
        + f" -> r={best} ({time.perf_counter() - t0:.0f}s)")
    return dataclasses.replace(spec, rank=best), est


def method_of(name: str) -> str:
    """The `method` column of a row name: minilm_methods' "cosvq-3b" is cosvq."""
    return name.removesuffix("-3b")


def _minilm_train_other(name: str, p) -> bool:
    """Besides the quantized layers: LayerNorms and biases train, the
    embedding tables (11.7M floats, unchanged by compression) do not."""
    return "embeddings" not in name or "LayerNorm" in name


def train_minilm(task: MiniLMTask, spec, budget_s: float, train: list[str],
                 evalset: list[str], eval_every: int = 100, batch: int = 16, seed: int = 0,
                 progress=say, lr=None, qm: QuantizedModel | None = None):
    qm = qm if qm is not None else QuantizedModel(task.bert, spec)
    t_eval = task.teacher(evalset)
    batches = task.bucketed(train, batch, seed)

    def ev(m):
        return {"eval_" + k: v for k, v in task.metrics(task.embed(m, evalset), t_eval).items()}

    cfg = dict(MINILM_LR if lr is None else lr)
    res = fit(qm, lambda m, b: task.loss(m, b), batches, budget_s=budget_s,
              train_other=_minilm_train_other, eval_fn=ev, eval_every=eval_every,
              log_every=eval_every, progress=progress, **cfg)
    return qm, res


# trained by default: (key, share of --budget-minutes). SSVQ and VQ at ~2
# bits get the full budget each (equal time for the equal-bits comparison);
# the ~3-bit group (SSVQ K=256 D=4 against int4 / int3 QAT) a fifth each,
# equal among themselves: at 3+ bits all three are within 0.01 of their
# final fidelity after two minutes (development runs), so a longer share
# would only lengthen the default run (25 + 25 + 3 x 5 min).
MINILM_TRAIN = [("ssvq-k256-d8", 1.0), ("vq-k256-d4", 1.0), ("ssvq-k256-d4", 0.2),
                ("int4", 0.2), ("int3", 0.2)]
MINILM_PTQ = ["int8", "ssvq-k256-d8", "ssvq-k256-d8-gptq", "ssvq-mixed-gptq", "vq-k256-d4",
              "ssvq-k256-d4", "ssvq-k256-d4-gptq", "int4", "int3"]


CALIB_SENTENCES = 128


def calibration_run(task: MiniLMTask, corpus: dict):
    """run(model) for QuantizedModel.capture: CALIB_SENTENCES training sentences
    spread evenly over the training corpus (so over its documents: the first 64
    all came from the first few, matplotlib's docstrings), each through the model
    on its own, so
    that no padding token (whose activations the embedding never uses) enters
    the calibration rows (compress.calib.MAX_ROWS of them are kept)."""
    train = corpus["train"]
    sentences = train[:: max(1, len(train) // CALIB_SENTENCES)][:CALIB_SENTENCES]

    def run(m):
        for s in sentences:
            task.embed(m, [s])
    return run


def budget_split(plan: list[tuple[str, float]], budget_minutes: float) -> dict[str, float]:
    """--budget-minutes is the run's total training time: each trained row gets
    the part of it its share is of all the shares (MINILM_TRAIN: the default run's
    25/25/5/5/5 at 65 minutes; the rows of a --methods selection, 1 each)."""
    total = sum(f for _, f in plan)
    return {k: budget_minutes * f / total for k, f in plan}


def run_minilm(out: Path, budget_minutes: float, methods: list[str] | None = None,
               seed: int = 0) -> dict:
    """--methods: names of minilm_specs() and of minilm_methods(); the budget
    is split among the trained rows by budget_split (MINILM_TRAIN's shares,
    1 for a name without one: the training methods get equal time)."""
    t_all = time.perf_counter()
    specs = minilm_specs()
    extra = minilm_methods()
    lrs = {}
    labels = {}
    for name, (label, spec, lr) in extra.items():
        specs[name] = (method_of(name), spec)
        lrs[name] = lr
        labels[name] = label
    plan = MINILM_TRAIN
    ptq = MINILM_PTQ
    if methods:
        methods = [METHOD_ALIASES.get(m, m) for arg in methods for m in arg.split(",") if m]
        unknown = [m for m in methods if m not in specs and m not in nas.MINILM_ROWS]
        if unknown:
            raise UserError(f"--methods: unknown method(s) {unknown}; expected some of "
                            f"{sorted(set(specs) | set(METHOD_ALIASES) | set(nas.MINILM_ROWS))}")
        # a selection is a comparison: every selected row trains for the same time
        plan = [(m, 1.0) for m in methods]
        # a selection's post-training rows: the int8 reference and each selected
        # row's own start (what its training began from)
        ptq = ["int8"] + [m for m in methods if m in MINILM_PTQ and m != "int8"]
    split = budget_split(plan, budget_minutes)
    out.mkdir(parents=True, exist_ok=True)
    threads = set_threads()
    corpus = build_corpus()
    task = MiniLMTask(loss="embedding")
    rng = np.random.default_rng(seed)
    tech = list(rng.choice(corpus["test_tech"], size=min(512, len(corpus["test_tech"])),
                           replace=False))
    held = tech + corpus["test_general"]
    probe = list(rng.choice(tech, size=96, replace=False)) + corpus["test_general"][:32]
    say(f"minilm: {len(task.lm.layers)} encoder Linear layers; corpus {len(corpus['train'])} "
         f"train sentences; held out: {len(tech)} sentences from held-out documents + "
         f"{len(corpus['test_general'])} everyday sentences; {threads} thread(s); "
         f"training budget {budget_minutes:g} min in all, split by share: "
         + ", ".join(f"{k} {split[k]:.2f} min ({f:g})" for k, f in plan)
         + f" (sum {sum(split.values()):.2f} min)")
    t0 = time.perf_counter()
    t_held = task.teacher(held)
    say(f"  teacher embeddings of the held-out set ({time.perf_counter() - t0:.1f}s)")
    n_w = sum(w.size for _, w, _ in task.lm.layers)
    rows, logs, trajectories = [], {}, {}

    def evaluate(model) -> dict:
        emb = task.embed(model, held)
        m = task.metrics(emb, t_held)
        g = task.metrics(emb[len(tech):], t_held[len(tech):])
        m.update({f"general_{k}": v for k, v in g.items()})
        return m

    calib_run = calibration_run(task, corpus)

    def hardware(qm, imgs) -> dict:
        """The accelerator's columns (ssvq.app.quality.hwcols) of exported images."""
        m = evaluate(integer_forward(qm.to_float(), imgs))
        return {"int_mean_cosine": m["mean_cosine"], "int_min_cosine": m["min_cosine"],
                "int_pearson": m["pearson"], **speedups(imgs)}

    def add(row, t0):
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        hw = "" if row.get("int_mean_cosine") is None else (
            f"  int mean cos {row['int_mean_cosine']:.4f}  x{row['speedup_int8']:.2f} int8 "
            f"x{row['speedup_int4']:.2f} int4")
        say(f"  {row['method']:6s} {row.get('config', ''):14s} trained={str(row['trained']):5s} "
             f"bits/weight {row['bits_per_weight']:6.3f}  mean cos {row['mean_cosine']:.4f}  "
             f"min cos {row['min_cosine']:.4f}  pearson {row['pearson']:.4f}{hw}  "
             f"({row['seconds']:.0f}s)")
        # rows so far survive an interrupted run; summary.json is written once, at the end
        (out / "summary.partial.json").write_text(json.dumps({"model": "minilm", "rows": rows},
                                                             indent=1, default=float))

    t0 = time.perf_counter()
    add(dict(method="fp32", config="", bits_per_weight=32.0, trained=False,
             **evaluate(task.bert), **no_images()), t0)
    # faiss anchor (the default run's; a --methods selection has its own rows only)
    for k, d in ([] if methods else [(256, 4), (256, 8)]):
        t0 = time.perf_counter()
        m = copy.deepcopy(task.bert)
        mods = dict(m.named_modules())
        bits = 0
        with torch.no_grad():
            for name, w, _ in task.lm.layers:
                rec, b = faiss_anchor(w, k, d, seed)
                mods[name].weight.copy_(torch.from_numpy(rec))
                bits += b
        add(dict(method="faiss", config=f"K={k} D={d}", trained=False,
                 bits_per_weight=bits / n_w, **evaluate(m), **no_images()), t0)
    # post-training rows; the trained rows start from the same wrapped model
    for key in ptq + [k for k, _ in plan if k not in ptq]:
        if key in nas.MINILM_ROWS:
            t0 = time.perf_counter()
            row, trajectories[key] = _nas_row(key, task, out, 60.0 * split[key], corpus, probe,
                                              calib_run, evaluate, hardware, seed)
            add(row, t0)
            continue
        method, spec = specs[key]
        t0 = time.perf_counter()
        estimate = {}
        if method == "lr2vq":
            spec, estimate["rank_estimate"] = lr2vq_rank(task, spec)
            labels[key] = f"{labels[key]} r={spec.rank}"
        qm = QuantizedModel(task.bert, spec, overrides=(
            plan_overrides(PLANS[key], spec) if key in PLANS else None),
            calibration=gptq_calibration(task, corpus["train"], seed))
        bpw = qm.bits()["bits_per_weight"]
        config = labels.get(key, key)
        if key in ptq or key in extra:
            row = dict(method=method, config=config, trained=False, bits_per_weight=bpw,
                       **estimate, **evaluate(qm.to_float()))
            row.update(hardware(qm, qm.export(qm.capture(calib_run))))
            add(row, t0)
        if key not in split:
            continue
        minutes = split[key]
        say(f"training {key} for {minutes:.2f} min (progress every 100 steps: probe-set "
             f"metrics on {len(probe)} held-out sentences) ...")
        t0 = time.perf_counter()
        start = {"step": 0, "seconds": 0.0, "progress": 0.0, **{
            "eval_" + k: v for k, v in task.metrics(task.embed(qm, probe),
                                                    task.teacher(probe)).items()}}
        torch.manual_seed(seed)
        qm, res = train_minilm(task, spec, 60.0 * minutes, corpus["train"], probe, seed=seed,
                               qm=qm, lr=lrs.get(key))
        trajectories[key] = [start] + [{k: r[k] for k in r if k.startswith("eval_") or k in
                                        ("step", "seconds", "progress")} for r in res.log
                                       if "eval_mean_cosine" in r]
        # bits after training: diffq's widths are learned
        row = dict(method=method, config=config, trained=True, steps=res.steps,
                   train_minutes=res.seconds / 60, bits_per_weight=qm.bits()["bits_per_weight"],
                   **estimate, **evaluate(qm.to_float()))
        if key in extra:
            row["spec"] = spec.to_dict()
            row["lr"] = lrs[key]
        meta = {"model": "minilm", "trained": True, "spec": spec.to_dict()}
        if key in PLANS:
            row["plan"] = _write_plan(out, key, PLANS[key])
            meta["plan"] = PLANS[key]
        calib = qm.capture(calib_run)
        imgs = qm.export(calib)
        row["images_round_trip"] = check_images(imgs, calib)
        row.update(hardware(qm, imgs))
        if method == "ssvq":
            logs[key] = res.log
            st = qm.sign_stats()
            row.update(frozen_fraction=st["frozen_fraction"], sign_flips=st["flips"],
                       signs_changed=st["changed"], signs=st["signs"])
        # every trained row's images are written and run on the generated Verilog
        d = out / "images" / key
        write_model_images(d, imgs, meta=meta)
        row["images"] = str(d.relative_to(out))
        row["configs"] = sorted({im.config.name for im in imgs})
        row.update(check_rtl(d, out / "rtl" / key, "verilator"))
        add(row, t0)
        del qm
    _write_minilm_report(out, rows, logs, trajectories, budget_minutes, split, threads,
                         time.perf_counter() - t_all, corpus, len(tech))
    return {"rows": rows}


def _write_plan(out: Path, key: str, plan: dict) -> str:
    """A row's plan JSON as out/plans/<key>.json (usable as `ssvq compress --config`);
    returns its path relative to out."""
    path = out / "plans" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1) + "\n")
    return str(path.relative_to(out))


def _nas_row(key: str, task: MiniLMTask, out: Path, budget_s: float, corpus: dict,
             probe: list[str], calib_run, evaluate, hardware,
             seed: int) -> tuple[dict, list[dict]]:
    """A `nas` row (ssvq.app.quality.nas.search_minilm with the budget fraction and
    candidates of nas.MINILM_ROWS[key]): search, choose, fine-tune, export on the
    search's build with the plan file beside the images, RTL check.
    Returns the row and the probe-set trajectory (search, then fine-tuning)."""
    fraction, candidates = nas.MINILM_ROWS[key]
    say(f"training {key} for {budget_s / 60:.2f} min ({nas.SEARCH_SHARE:.2f} of it searching, "
        f"the rest fine-tuning the chosen layers) ...")

    def train_fn(qm, seconds, lr):
        return train_minilm(task, None, seconds, corpus["train"], probe, seed=seed, qm=qm,
                            lr=lr)

    qm, row, cfg, meta, plan, log = nas.search_minilm(task.bert, budget_s, train_fn, MINILM_LR,
                                                      seed=seed, fraction=fraction,
                                                      candidates=candidates, progress=say)
    configs = set(row["choice"].values())
    row.update(method="nas", config=configs.pop() if len(configs) == 1 else "mixed",
               trained=True, bits_per_weight=qm.bits()["bits_per_weight"],
               **evaluate(qm.to_float()))
    calib = qm.capture(calib_run)
    imgs = qm.export(calib)
    row["images_round_trip"] = check_images(imgs, calib)
    row.update(hardware(qm, imgs))
    plan_file = _write_plan(out, key, plan.to_dict())
    d = out / "images" / key
    write_model_images(d, imgs, cfg=cfg, meta={"model": "minilm", "trained": True,
                                               "nas": dict(meta, plan_file=plan_file)})
    row.update(images=str(d.relative_to(out)), plan=plan_file,
               configs=sorted({im.config.name for im in imgs}))
    row.update(check_rtl(d, out / "rtl" / key, "verilator"))
    trajectory = [{k: r[k] for k in r if k.startswith("eval_") or k in
                   ("step", "seconds", "progress")} for r in log if "eval_mean_cosine" in r]
    return row, trajectory


# The targets of the headline SSVQ row (`--methods ssvq --budget-minutes 30`)
HEADLINE = {"mean_cosine": 0.96, "bits_per_weight": 2.1, "train_minutes": 30.0,
            "int_gap": 0.005, "speedup_int8": 3.7, "speedup_at_cosine": 0.95}


def headline_verdict(h: dict, rows: list[dict]) -> str:
    """One paragraph: the headline SSVQ row against HEADLINE, each target met or
    short by how much (the speedup target over every row with images)."""
    t = HEADLINE
    gap = h["mean_cosine"] - h["int_mean_cosine"]
    fid = (h["mean_cosine"] >= t["mean_cosine"] and h["bits_per_weight"] <= t["bits_per_weight"]
           and h["train_minutes"] <= t["train_minutes"] + 0.5)
    fast = [r for r in rows if r.get("speedup_int8") is not None
            and r["mean_cosine"] >= t["speedup_at_cosine"]]
    best = max(fast, key=lambda r: r["speedup_int8"]) if fast else None
    sp = (f"best speedup over int8 among rows at mean cosine >= {t['speedup_at_cosine']}: "
          + (f"x{best['speedup_int8']:.3f} ({best['method']} {best['config']}, "
             f"{best['mean_cosine']:.4f}) — target x{t['speedup_int8']} "
             + ("met" if best["speedup_int8"] >= t["speedup_int8"] else
                f"NOT met, short by {t['speedup_int8'] - best['speedup_int8']:.3f}")
             if best else f"no row reaches {t['speedup_at_cosine']} — target NOT met"))
    return (f"**Headline SSVQ ({h['config']}, {h['bits_per_weight']:.3f} bits/weight, trained "
            f"{h['train_minutes']:.1f} min, {h['steps']} steps):** held-out mean cosine "
            f"{h['mean_cosine']:.4f} — target >= {t['mean_cosine']} at <= "
            f"{t['bits_per_weight']} bits/weight within {t['train_minutes']:g} min "
            + ("met" if fid else f"NOT met, short by {t['mean_cosine'] - h['mean_cosine']:.4f}"
               if h["mean_cosine"] < t["mean_cosine"] else "NOT met (bits or time)")
            + f"; integer path {h['int_mean_cosine']:.4f}, {gap:.4f} below (target <= "
            f"{t['int_gap']}: {'met' if gap <= t['int_gap'] else 'NOT met'}); x"
            f"{h['speedup_int8']:.3f} over int8, x{h['speedup_int4']:.3f} over int4; {sp}.")


def _best(rows, **kw):
    c = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    return max(c, key=lambda r: r["mean_cosine"]) if c else None


def _write_minilm_report(out, rows, logs, trajectories, budget_minutes, split, threads,
                         seconds, corpus, n_tech):
    (out / "summary.json").write_text(json.dumps(
        {"model": "minilm", "budget_minutes": budget_minutes, "budget_split_minutes": split,
         "threads": threads, "speedup_build": AccelConfig().to_dict(), "rows": rows,
         "trajectories": trajectories, "freezing": freezing_summary(logs)},
        indent=1, default=float))
    plot_pareto(rows, "mean_cosine", out / "fidelity_vs_bits.png",
                "MiniLM (36 encoder Linear layers): held-out embedding cosine vs bits/weight",
                "mean cosine to the original embeddings",
                ylim=(max(0.0, min(r["mean_cosine"] for r in rows) - 0.02), 1.005))
    plot_speedup(rows, "int_mean_cosine", out / "fidelity_vs_speedup.png",
                 "MiniLM: held-out embedding cosine on the integer path vs speedup over int8",
                 "mean cosine to the original, integer path")
    if logs:
        plot_freezing(logs, out / "sign_freezing.png", "MiniLM: SSVQ sign freezing")
    if trajectories:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for k, tr in trajectories.items():
            ax.plot([r["seconds"] / 60 for r in tr], [r["eval_mean_cosine"] for r in tr],
                    label=k)
        ax.set_xlabel("training minutes")
        ax.set_ylabel("mean cosine (probe set)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=120)
        plt.close(fig)
    cols = ["method", "config", "trained", "bits_per_weight", "mean_cosine", "min_cosine",
            "pearson", "general_mean_cosine", "int_mean_cosine", "speedup_int8",
            "speedup_int4", "rtl_bit_exact", "seconds"]
    lines = [
        "# Embedding fidelity per bit: MiniLM (all-MiniLM-L6-v2)",
        "",
        f"All 36 encoder nn.Linear layers compressed (embeddings, LayerNorms and the "
        f"unused pooler stay float, as in every row). Trained rows: distillation from the "
        f"original model (loss 1 - cosine between mean-pooled sentence embeddings; "
        f"compress.train.fit, Adam, cosine learning rate) on {len(corpus['train'])} English "
        f"sentences available offline ({corpus['sources']}), batches of 16 sentences of "
        f"similar length; --budget-minutes {budget_minutes:g} is the training time of the "
        f"whole run, split by share: "
        + ", ".join(f"{k} {v:.1f} min" for k, v in split.items())
        + f", on {threads} thread(s). Held out: {n_tech} sentences from documents never trained on "
        f"plus the {len(corpus['test_general'])} everyday sentences of "
        f"compress/data/sentences.txt. Metrics: mean and minimum cosine between compressed "
        f"and original embeddings, Pearson correlation of the two pairwise-similarity "
        f"matrices (upper triangles); `general_mean_cosine` on the everyday sentences alone. "
        f"Bits/weight over the 36 layers with codebooks, codes, signs, 16-bit row scales and "
        f"padding. Total run {seconds / 60:.1f} min.",
        "",
        "Accelerator columns (every row with images; ssvq.app.quality.hwcols): "
        "`int_mean_cosine` is `mean_cosine` with every compressed Linear computed by the "
        "accelerator's integer arithmetic (compress.intlinear: int8 activations at the "
        "image's calibrated scale, the integer MAC, the image's bias/mult/shift "
        "requantization, int8 outputs times the output scale; calibration: the inputs of "
        f"{CALIB_SENTENCES} training sentences, one at a time (no padding), through "
        "compress.calib's rule). `speedup_int8` / `speedup_int4`: whole-model cycles of the "
        "36 layers as int8 (int4) images over the row's cycles, each layer in its own "
        "configuration, on the default build (sim.cost, the RTL's cycle counter). "
        "`rtl_bit_exact`: the generated Verilog on Verilator, one layer per configuration "
        "and shape, against the golden outputs, cycles and counters (every trained row).",
        "",
    ]
    h = _best(rows, config=METHOD_ALIASES["ssvq"], trained=True)
    if h:
        lines += [headline_verdict(h, rows), ""]
    s8 = _best(rows, config="ssvq-k256-d8", trained=True)
    v4 = _best(rows, config="vq-k256-d4", trained=True)
    if s8:
        ok = s8["bits_per_weight"] <= 2.1 and s8["mean_cosine"] >= 0.93
        lines += [f"**SSVQ K=256 D=8 ({s8['bits_per_weight']:.3f} bits/weight), trained "
                  f"{s8['train_minutes']:.1f} min ({s8['steps']} steps):** held-out mean cosine "
                  f"{s8['mean_cosine']:.4f}, min {s8['min_cosine']:.4f}, Pearson "
                  f"{s8['pearson']:.4f} — target (>= 0.93 at <= 2.1 bits) "
                  f"{'met' if ok else 'NOT met'} in this run."]
        if v4:
            v, wins = verdict(s8, v4)
            lines += ["", f"**Against trained VQ K=256 D=4 at equal bits: {v}.** VQ "
                      f"({v4['bits_per_weight']:.3f} bits/weight, same training time): mean "
                      f"{v4['mean_cosine']:.4f}, min {v4['min_cosine']:.4f}, Pearson "
                      f"{v4['pearson']:.4f}; SSVQ better on {len(wins)}/3 metrics "
                      f"({', '.join(wins) or 'none'})."]
        lines.append("")
    s4 = _best(rows, config="ssvq-k256-d4", trained=True) or _best(rows, config="ssvq-k256-d4")
    if s4:
        lines += ["## About 3 bits/weight: SSVQ K=256 D=4 against int4 and int3", "",
                  "| row | trained | bits/weight | mean cos | min cos | Pearson |",
                  "|---|---|---|---|---|---|"]
        group = [r for r in rows if r["config"] in ("ssvq-k256-d4", "int4", "int3")]
        for r in group:
            lines.append(f"| {r['config']} | {r['trained']} | {r['bits_per_weight']:.3f} | "
                         f"{r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
                         f"{r['pearson']:.4f} |")
        tol = 0.05                 # "equal" bits: within 0.05 bits/weight
        fewer = [r for r in group if r["method"] in ("int3", "int4")
                 and r["bits_per_weight"] <= s4["bits_per_weight"] + tol]
        more = [r for r in group if r["method"] in ("int3", "int4")
                and r["bits_per_weight"] > s4["bits_per_weight"] + tol]
        tag = "trained" if s4["trained"] else "post-training"
        if fewer:
            b = max(fewer, key=lambda r: r["mean_cosine"])
            v, wins = verdict(s4, b)
            lines += ["", f"**At equal or fewer bits: {v}.** SSVQ K=256 D=4 ({tag}, "
                      f"{s4['bits_per_weight']:.3f} bits/weight): mean cosine "
                      f"{s4['mean_cosine']:.4f}, min {s4['min_cosine']:.4f}, Pearson "
                      f"{s4['pearson']:.4f}; best uniform row at <= "
                      f"{s4['bits_per_weight'] + tol:.2f} bits, {b['config']} "
                      f"({'QAT' if b['trained'] else 'post-training'}, "
                      f"{b['bits_per_weight']:.3f}): {b['mean_cosine']:.4f}, "
                      f"{b['min_cosine']:.4f}, {b['pearson']:.4f}. SSVQ better on "
                      f"{len(wins)}/3 metrics."]
        if more:
            b = max(more, key=lambda r: r["mean_cosine"])
            lines += ["", f"With about one bit per weight more, {b['config']} "
                      f"({'QAT' if b['trained'] else 'post-training'}, "
                      f"{b['bits_per_weight']:.3f} bits/weight) reaches mean cosine "
                      f"{b['mean_cosine']:.4f} "
                      f"({'above' if b['mean_cosine'] > s4['mean_cosine'] else 'below'} "
                      f"SSVQ K=256 D=4's {s4['mean_cosine']:.4f})."]
        lines.append("")
    verdicts = band_verdicts(rows)
    if verdicts:
        lines += ["## Which method wins (trained rows, equal training time each)", "",
                  *verdicts, ""]
    lines += ["## All rows", "", table(rows, cols), "",
              "![fidelity vs bits](fidelity_vs_bits.png)", ""]
    lines += ["SSVQ codes stay fixed at their k-means assignment (compress.train default). "
              "Development measurement (not part of this run): K=256 D=8, 5 min on one "
              "shared thread, probe-set mean cosine 0.9035 with fixed codes against 0.8965 "
              "when every vector moved to the codeword nearest its |latent| vector every 50 "
              "steps; sign-latent learning rate 5e-3 (2e-3: 0.876, 1e-2: 0.902, 2e-2: 0.892, "
              "4e-2: 0.849, 1e-1: diverged) and the embedding loss (adding every layer's "
              "hidden-state error: 0.895, fewer steps in the same time) chosen the same way.",
              ""]
    front = pareto_front(rows, "mean_cosine")
    lines += ["Pareto front: " + ", ".join(
        f"{rows[i]['config'] or rows[i]['method']} "
        f"({'trained' if rows[i]['trained'] else 'reference' if rows[i]['method'] == 'fp32' else 'PTQ'}, "
        f"{rows[i]['bits_per_weight']:.2f} b)" for i in front), ""]
    fast = pareto_front(rows, "int_mean_cosine", x="speedup_int8", more_x_better=True)
    lines += ["Pareto front of integer-path fidelity against speedup over int8: " + ", ".join(
        f"{rows[i]['config'] or rows[i]['method']} "
        f"({'trained' if rows[i]['trained'] else 'PTQ'}, x{rows[i]['speedup_int8']:.2f}, "
        f"{rows[i]['int_mean_cosine']:.4f})" for i in fast), "",
        "![fidelity vs speedup](fidelity_vs_speedup.png)", ""]
    if trajectories:
        lines += ["## Training trajectories (probe set, every 100 steps)", "",
                  "![training](training.png)", ""]
        for k, tr in trajectories.items():
            pts = ", ".join(f"{r['seconds'] / 60:.1f} min {r['eval_mean_cosine']:.4f}"
                            for r in tr[:: max(1, len(tr) // 8)])
            lines.append(f"- {k}: {pts}")
        lines.append("")
    new = [r for r in rows if (r["method"] in {method_of(k) for k in minilm_methods()}
                               or r["method"] == "nas") and r["trained"]]
    if new:
        lines += ["## Training methods (compress.cosvq, dkm, diffq, lr2vq, qsd, nas)", "",
                  "Each method's rows: its initialisation (post-training, untrained row) "
                  "and the model trained from it; --budget-minutes split among the rows "
                  "trained, equally among these methods (equal training time); "
                  "learning-rate groups "
                  "in summary.json (`lr`). Bits/weight after training (diffq's widths are "
                  "learned, one int width per layer).", "",
                  "| method | config | bits/weight | mean cos | min cos | Pearson | steps | "
                  "train min | image configs | stream round trip | RTL |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in new:
            rtl = ("bit-exact" if r.get("rtl_bit_exact") else "FAILED") + \
                f" ({r.get('rtl_simulator')}, {len(r.get('rtl_layers', []))} layers)"
            lines.append(f"| {r['method']} | {r['config']} | {r['bits_per_weight']:.3f} | "
                         f"{r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
                         f"{r['pearson']:.4f} | {r['steps']} | {r['train_minutes']:.1f} | "
                         f"{', '.join(r.get('configs', []))} | {r['images_round_trip']} | "
                         f"{rtl} |")
        est = next((r for r in new if r.get("rank_estimate")), None)
        if est:
            lines += ["", "LR2VQ's rank r (the clustering dimensionality d~) is chosen before "
                      "training: relative error of the rank-r clustering of the "
                      "sub-vectors (low-rank part + clustering part, "
                      "compress.lr2vq.rank_estimate, weighted by each layer's weights); "
                      f"the row trains the r of least total, r={est['spec']['rank']}.", "",
                      "| r | low-rank part | clustering part | total |", "|---|---|---|---|"]
            lines += [f"| {e['rank']} | {e['low_rank']:.4f} | {e['clustering']:.4f} | "
                      f"{e['total']:.4f} |" for e in est["rank_estimate"]]
        lines += ["", "Images of every trained row in `images/<method>/`; the generated "
                  "Verilog (Verilator) ran the first layer of each shape against the golden "
                  "model (outputs, cycles and counters, in `rtl/<method>/`).", ""]
    if logs:
        lines += ["## Sign freezing", "",
                  "Fraction of frozen signs and sign flips per step (over all signs) during "
                  "training: flip threshold 4 until 40% of the budget, decaying linearly to 0 "
                  "at 80%, where every sign freezes.", "", "![sign freezing](sign_freezing.png)",
                  ""]
        for r in rows:
            if r["method"] == "ssvq" and r["trained"]:
                lines.append(f"- {r['config']}: {r['sign_flips']} flips in all, "
                             f"{r['signs_changed']} of {r['signs']} signs "
                             f"({100 * r['signs_changed'] / r['signs']:.2f}%) differ from "
                             f"the original weights' signs at the end; images in "
                             f"`{r['images']}`, stream round trip bit-exact on every "
                             f"layer: {r['images_round_trip']}; generated Verilog on "
                             f"{r.get('rtl_simulator')} (layers {', '.join(r.get('rtl_layers', []))}"
                             f"; outputs, cycles and counters against the golden model, in "
                             f"`rtl/`): {'bit-exact' if r.get('rtl_bit_exact') else 'FAILED'}.")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.partial.json").unlink(missing_ok=True)
