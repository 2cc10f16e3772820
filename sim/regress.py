"""Seeded regression runs (`make regress`): each seed picks a build, a simulator, a few
random layers (modes, K, D, bit widths, M, coefficient widths, odd shapes), stall
probabilities on each side (0 to 0.9), memory latency, overlapped layers and sometimes a
reset in a random phase, and runs them on the memstream testbench.

    python -m sim.regress run --seed N          one case (the repro command of a failure)
    python -m sim.regress coverage DIR --out D  merge the runs' coverage, fail on a missing bin
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ssvq.config import AccelConfig, LayerConfig
from ssvq.image import LayerImage
from ssvq.reference import accumulate

REPO = Path(__file__).resolve().parents[1]
# builds the regression runs on (small max sizes keep the Verilator builds quick)
BUILDS = {
    "small": AccelConfig(kmax=16, d_set=(1, 2, 4), mults=8, max_rows=256, max_cols=256),
    "default": AccelConfig(max_rows=128, max_cols=256),
    "b128": AccelConfig(kmax=16, d_set=(4,), mults=16, bus=128, max_rows=128, max_cols=128),
}
PROBS = (0.0, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
LATENCIES = (0, 0, 1, 3, 17)


def random_layer(name: str, rows: int, cols: int, rng: np.random.Generator, lname: str,
                 extremes: bool = False) -> LayerImage:
    lc = LayerConfig.parse(name)
    img = LayerImage(name=lname, config=lc, rows=rows, cols=cols, bias=None, mult=None,
                     shift=None, act=rng.integers(-128, 128, cols).astype(np.int8))
    if lc.mode == "int":
        b = lc.bits
        img.weights = (rng.choice([-1, 1], (rows, cols)) if b == 1 else
                       rng.integers(-(1 << (b - 1)), 1 << (b - 1), (rows, cols))).astype(np.int8)
    else:
        v = -(-cols // lc.d)
        if lc.mode == "ssvq":
            img.codebook = rng.integers(0, 256, (lc.m * lc.k, lc.d)).astype(np.uint8)
            img.signs = rng.integers(0, 2, (rows, cols)).astype(np.uint8)
        else:
            img.codebook = rng.integers(-128, 128, (lc.m * lc.k, lc.d)).astype(np.int8)
        img.codes = rng.integers(0, lc.k, (rows, v, lc.m)).astype(np.int32)
        if lc.coef_bits:
            h = 1 << (lc.coef_bits - 1)
            img.coefs = rng.integers(-h, h, (rows, v, lc.m)).astype(np.int8)
    acc = accumulate(img)
    bias = rng.integers(-(1 << 12), 1 << 12, rows)
    mult = rng.integers(1, 1 << 16, rows)
    # shift so that outputs land mostly inside int8 with some saturation
    mag = np.maximum(np.abs(acc + bias) * mult, 1)
    shift = np.clip(np.ceil(np.log2(mag)).astype(np.int64) - 6 + rng.integers(-2, 2, rows), 1, 63)
    if extremes:
        # requantization corners: full-range bias/mult, shift 1 and 63, zero mult
        k = rows
        bias[: k // 4] = rng.choice([-(1 << 31), (1 << 31) - 1, 0, -1], k // 4)
        mult[k // 4: k // 2] = rng.choice([0, 1, (1 << 16) - 1], k // 2 - k // 4)
        shift[k // 2: 3 * k // 4] = rng.choice([1, 2, 62, 63], 3 * k // 4 - k // 2)
    img.bias = bias.astype(np.int32)
    img.mult = mult.astype(np.uint16)
    img.shift = shift.astype(np.uint8)
    return img


# ---------------------------------------------------------------------- cases
def _layer_configs(cfg: AccelConfig) -> list[str]:
    """Every layer configuration the build runs (K up to 16 to keep codebooks short)."""
    out = []
    if "int" in cfg.modes:
        out += [f"int{b}" for b in cfg.int_bits]
    for mode in cfg.codebook_modes:
        for d in cfg.d_set:
            for k in sorted({2, min(16, cfg.kmax)}):
                out.append(f"{mode}-k{k}-d{d}")
                if cfg.m_max >= 2 and cfg.coef_bits_max:
                    out.append(f"{mode}-k{k}-d{d}-m2-c{cfg.coef_bits_max}")
    return out


def case(seed: int) -> dict:
    """The run a seed stands for (pure function of the seed)."""
    rng = np.random.default_rng([seed, 0x55])
    build = str(rng.choice(sorted(BUILDS)))
    cfg = BUILDS[build]
    configs = _layer_configs(cfg)
    n = int(rng.integers(1, 5))
    layers = []
    for _ in range(n):
        name = str(rng.choice(configs))
        # odd shapes: not multiples of the lanes, D, mults or beats; several output blocks
        rows = int(rng.choice([1, 3, 9, 17, 40, 77, 96])) if rng.random() < 0.5 else int(rng.integers(1, 97))
        cols = int(rng.integers(1, 130))
        layers.append((name, min(rows, cfg.max_rows), min(cols, cfg.max_cols)))
    resets = []
    if rng.random() < 0.15:
        from sim.tb.test_memstream import RESET_PHASES
        i = int(rng.integers(0, n))
        phases = [p for p in RESET_PHASES
                  if not (p == "codebook" and layers[i][0].startswith("int"))]
        resets = [{"layer": i, "phase": str(rng.choice(phases))}]
        layers.append(layers[i])          # something to run after the reset
    return {"seed": seed, "build": build,
            "simulator": "icarus" if rng.random() < 0.2 else "verilator",
            "layers": layers, "stall_prob_in": float(rng.choice(PROBS)),
            "stall_prob_out": float(rng.choice(PROBS)),
            "latency": int(rng.choice(LATENCIES)), "overlap": bool(rng.random() < 0.3),
            "resets": resets}


def repro_command(c: dict, root: Path) -> str:
    d = Path(root) / f"seed{c['seed']}"
    return (f"ssvq sim --images {d / 'images'} --all --build-config {d / 'build.json'} "
            f"--simulator {c['simulator']} --seed {c['seed']} "
            f"--stall-prob-in {c['stall_prob_in']} --stall-prob-out {c['stall_prob_out']} "
            f"--latency {c['latency']}{' --overlap' if c['overlap'] else ''} --out {d / 'rerun'}"
            + (f"   (plus the reset {c['resets']}: python -m sim.regress run --seed {c['seed']})"
               if c["resets"] else ""))


def run_case(seed: int, root="build/regress", build_root="build/sim", keep=False) -> dict:
    """Writes the case's images and build config under root/seed<N>/, runs it, and
    keeps what the coverage needs in root/cov/seed<N>.json. Returns
    {"case", "passed", "failures", "repro"}; the folder stays when the run failed."""
    from sim.runner import simulate_images
    from ssvq.image import write_images

    c = case(seed)
    root = Path(root)
    d = root / f"seed{seed}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    cfg = BUILDS[c["build"]]
    (d / "build.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    rng = np.random.default_rng([seed, 0xAA])
    imgs = [random_layer(n, r, k, rng, f"l{i}_{n}_{r}x{k}") for i, (n, r, k) in
            enumerate(c["layers"])]
    images = write_images(d / "images", cfg, imgs)
    s = simulate_images(images, None, c["simulator"], seed=seed, latency=c["latency"],
                        out_dir=d / "sim", progress=None, build_root=build_root,
                        overlap=c["overlap"], stall_prob_in=c["stall_prob_in"],
                        stall_prob_out=c["stall_prob_out"], resets=c["resets"] or None)
    failures = [f"{l['name']}: {l.get('error') or '; '.join((l.get('problems') or [])[:3])}"
                for l in s["layers"] if not l["passed"]]
    results = []
    for l in s["layers"]:
        rp = d / "sim" / l["dir"] / "result.json"
        r = json.loads(rp.read_text()) if rp.is_file() else {}
        results.append({k: r.get(k) for k in ("name", "coverage", "overlap", "passed")})
    (root / "cov").mkdir(parents=True, exist_ok=True)
    (root / "cov" / f"seed{seed}.json").write_text(json.dumps(
        {"case": c, "passed": not failures, "layers": results}))
    if not failures and not keep:
        shutil.rmtree(d, ignore_errors=True)
    return {"case": c, "passed": not failures, "failures": failures,
            "repro": repro_command(c, root)}


def coverage_report(root, out) -> tuple[dict, str]:
    from sim.coverage import Coverage

    cov = Coverage()
    runs = failed = 0
    for p in sorted(Path(root, "cov").glob("seed*.json")):
        rec = json.loads(p.read_text())
        runs += 1
        failed += not rec["passed"]
        for r in rec["layers"]:
            cov.add_result(r)
    d = cov.to_dict() | {"runs": runs, "failed_runs": failed}
    text = (f"# Regression coverage\n\n{runs} seeded runs ({failed} failed), {cov.runs} layers.\n"
            f"Bins: mode x section x position x event (sim/coverage.py); "
            f"`(n/a)`: not necessary for that mode (unreachable or not built).\n\n"
            + cov.table() + "\n\n"
            + (f"**Missing necessary bins:** {', '.join(d['missing'])}\n" if d["missing"]
               else "Every necessary bin was hit.\n"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(d, indent=1))
    (out / "coverage.md").write_text(text)
    return d, text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.regress")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one seeded case")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--root", default="build/regress")
    c = sub.add_parser("coverage", help="merge coverage of the runs under ROOT")
    c.add_argument("root", nargs="?", default="build/regress")
    c.add_argument("--out", default="reports/regress")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        res = run_case(a.seed, a.root, keep=True)
        print(json.dumps(res["case"]))
        print("PASS" if res["passed"] else "FAIL:\n  " + "\n  ".join(res["failures"]))
        return 0 if res["passed"] else 1
    d, text = coverage_report(a.root, a.out)
    print(text)
    return 1 if d["missing"] or d["failed_runs"] or not d["runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
