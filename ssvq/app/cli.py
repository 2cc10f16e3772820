"""The `ssvq` console script: parses arguments, runs the command, and turns the
project's errors into one line and exit status 2 (ssvq.errors)."""
from __future__ import annotations

import argparse
import sys

from ssvq.errors import SsvqError


def _cmd(module: str, name: str):
    def run(args):
        import importlib
        return getattr(importlib.import_module(module), name)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssvq", description="Compress PyTorch weights into SSVQ / VQ / additive / int-b "
        "memory images, generate and verify the runtime-configurable decode-and-MAC "
        "accelerator, and report its speedup.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model's weights into memory images")
    c.add_argument("--model", default="minilm",
                   help="minilm, digits, or a path to a state_dict .pt / .safetensors file")
    c.add_argument("--config", help="per-layer configuration JSON ({global, layers, "
                   "small_layers}); --method/--k/--d are shorthand for its global part")
    c.add_argument("--method", help="ssvq, vq, int1..int8, additive (default ssvq)")
    c.add_argument("--k", type=int, help="codebook entries (default 256)")
    c.add_argument("--d", type=int, help="vector length (default 8)")
    c.add_argument("--m", type=int, help="additive: codewords per vector (default 2)")
    c.add_argument("--coef-bits", type=int, help="additive: coefficient bits (default 4)")
    c.add_argument("--mults", type=int, default=32, help="accelerator multipliers")
    c.add_argument("--bus", type=int, default=64, help="accelerator bus width in bits")
    c.add_argument("--calib", help="calibration inputs: per-layer input activations "
                   "(.npz / .safetensors, one (n, cols) array per layer name) or a "
                   "torch.export program (.pt2) with its sample inputs")
    c.add_argument("--layers", nargs="*", help="only these layer names")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true",
                   help="replace --out even if it is not an image set written by ssvq")
    c.add_argument("--out", required=True, help="output image folder")
    c.set_defaults(func=_cmd("ssvq.app.compress_cmd", "compress_cmd"))

    v = sub.add_parser("verilog", help="generate the accelerator's Verilog")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="accelerator build config JSON (ssvq.config.AccelConfig "
                     "fields; missing ones take the defaults)")
    src.add_argument("--images", help="image folder: build what covers every layer in it")
    v.add_argument("--out", required=True)
    v.add_argument("--target", choices=("ecp5", "generic"), default="ecp5",
                   help="ecp5 (default): DP16KD / MULT18X18D primitives with their registers, "
                        "plus their simulation models; generic: inferred memories and fabric "
                        "registers, the same cycle behaviour")
    v.set_defaults(func=_cmd("ssvq.app.commands", "verilog_cmd"))

    s = sub.add_parser("sim", help="simulate layers in cocotb against the golden model")
    s.add_argument("--images", required=True)
    s.add_argument("--layers", nargs="*", help="layer names (default: one per distinct "
                   "configuration and shape)")
    s.add_argument("--all", action="store_true", help="every layer")
    s.add_argument("--simulator", choices=["icarus", "verilator"], default="verilator")
    s.add_argument("--build-config", help="run on this accelerator build (JSON) instead of "
                   "the one the images were written for")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--stall-prob", type=float, default=0.0,
                   help="probability of an input gap / output back-pressure each cycle")
    s.add_argument("--stall-prob-in", type=float, help="input gaps only (default --stall-prob)")
    s.add_argument("--stall-prob-out", type=float,
                   help="output back-pressure only (default --stall-prob)")
    s.add_argument("--latency", type=int, default=0, help="memory model latency in cycles")
    s.add_argument("--overlap", action="store_true",
                   help="queue each layer's stream right behind the previous one's")
    s.add_argument("--stimulus", choices=["memstream", "python"], default="memstream",
                   help="memstream: streams and stall generators inside the simulation "
                   "(fast); python: every beat driven from Python")
    s.add_argument("--waves", action="store_true",
                   help="write a waveform into --out/_job (dump.vcd on Verilator, waves.fst on Icarus)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd("ssvq.app.commands", "sim_cmd"))

    r = sub.add_parser("report", help="cost model, speedup and access-count report")
    r.add_argument("--images", required=True, help="compressed image folder")
    r.add_argument("--baseline", help="int8 image folder of the same model (default: int8 "
                   "and int4 baselines derived from the layer shapes)")
    r.add_argument("--sim", help="folder written by `ssvq sim` for the compressed images")
    r.add_argument("--baseline-sim", help="folder written by `ssvq sim` for the int8 images")
    r.add_argument("--out", required=True)
    r.set_defaults(func=_cmd("ssvq.app.commands", "report_cmd"))

    d = sub.add_parser("demo", help="the whole flow on one model")
    d.add_argument("--model", default="minilm")
    d.add_argument("--k", type=int, default=256)
    d.add_argument("--d", type=int, default=8)
    d.add_argument("--simulator", choices=["icarus", "verilator"], default="verilator")
    d.add_argument("--all-layers", action="store_true", help="simulate every layer")
    d.add_argument("--out", default="reports/demo")
    d.add_argument("--work", default="build/demo", help="images, Verilog and sim output")
    d.set_defaults(func=_cmd("ssvq.app.demo", "demo_cmd"))

    q = sub.add_parser("quality", help="accuracy-per-bit evaluation of the compressors")
    q.add_argument("--model", choices=["digits", "minilm"], default="digits")
    q.add_argument("--budget-minutes", type=float, default=25.0,
                   help="MiniLM: the run's total training minutes, split among the "
                   "trained rows by share (SSVQ K=256 D=8 and VQ K=256 D=4 1 each, the "
                   "~3-bit group SSVQ D=4, int4, int3 0.2 each, any other --methods name 1): "
                   "default 25; without --methods, 65 gives 25/25/5/5/5 min as in the "
                   "measured run. digits: below 5, fewer steps")
    q.add_argument("--methods", nargs="*", metavar="METHOD",
                   help="MiniLM: train only these, for equal shares of --budget-minutes: "
                   "the method table's cosvq, dkm, nas, lr2vq, qsd, diffq, ssvq (the mixed "
                   "per-layer SSVQ plan, ssvq-mixed-gptq), vq (vq-k256-d4), int4; ~3-bit "
                   "rows cosvq-3b, qsd-3b, nas-3b, ssvq-k256-d4-gptq, int3; single "
                   "configurations ssvq-k256-d8, ssvq-k256-d8-gptq, ssvq-k256-d4, "
                   "ssvq-k256-d8-reassign, int8. digits: run only these "
                   "training methods (comma or space separated; ssvq.app.quality.methods: "
                   "cosvq, dkm, diffq, lr2vq, qsd, vq, ssvq, int4, nas), each configuration "
                   "trained for --row-seconds")
    q.add_argument("--row-seconds", type=float,
                   help="digits --methods: wall-clock training seconds of every trained row "
                   "(default 20; equal for all rows)")
    q.add_argument("--nas-budget", metavar="FRACTIONS",
                   help="digits --methods nas: cycle budgets as fractions of the int8 "
                   "model's cycles (sim.golden.timing), comma separated (default 0.6,0.4); "
                   "one searched row per budget (search --row-seconds, fine-tuning half "
                   "of it)")
    q.add_argument("--out", help="report folder (default reports/quality-<model>)")
    q.set_defaults(func=_cmd("ssvq.app.quality.command", "quality_cmd"))

    y = sub.add_parser("synth", help="FPGA synthesis (yosys + nextpnr-ecp5)")
    y.add_argument("--config", help="accelerator build config JSON")
    y.add_argument("--out", required=True)
    y.add_argument("--speeds", default="6,8",
                   help="ECP5 speed grades to place and route, comma separated (default 6,8: "
                        "in parallel, one process each)")
    y.set_defaults(func=_cmd("ssvq.app.commands", "synth_cmd"))

    w = sub.add_parser("sweep", help="design-space sweep: area, Fmax, cycles, energy per "
                       "build point, Pareto fronts")
    w.add_argument("--model", default="minilm", help="minilm (its 36 encoder layer shapes)")
    w.add_argument("--grid", required=True, help="grid JSON: {field: [values]} (cartesian "
                   "product), a list of points, or {base, grid, points}; fields of "
                   "ssvq.config.AccelConfig")
    w.add_argument("--out", default="reports/sweep", help="output folder (sweep.json, "
                   "sweep.md, plots, points/ cache)")
    w.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: concurrent.futures processes; ray: Ray tasks on a local "
                   "ray.init() (default local)")
    w.add_argument("--jobs", type=int, default=2, help="points synthesised at once (default 2)")
    w.add_argument("--images", help="image set: its layer shapes (and, without --plan, "
                   "its per-layer configs) instead of MiniLM's")
    w.add_argument("--plan", help="comma-separated preference list of configs (e.g. "
                   "ssvq-k256-d8,int4): each point runs the first it can, on every layer "
                   "(default: auto, the fastest config with a quality row >= --min-cosine)")
    w.add_argument("--min-cosine", type=float, default=0.9,
                   help="auto plan: lowest acceptable mean cosine (default 0.9)")
    w.add_argument("--quality", help="quality summary.json for the auto plan and the "
                   "fidelity column (default reports/measured/quality-minilm/summary.json "
                   "if present)")
    w.add_argument("--pnr", action=argparse.BooleanOptionalAction, default=False,
                   help="also place and route (nextpnr-ecp5) for a measured Fmax "
                   "(default off: Yosys area only, throughput at --clock-mhz)")
    w.add_argument("--clock-mhz", type=float, default=100.0,
                   help="clock assumed without --pnr (default 100, the synthesis target)")
    w.add_argument("--work", default="build/sweep", help="synthesis work folders")
    w.set_defaults(func=_cmd("ssvq.app.sweep", "sweep_cmd"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except SsvqError as e:
        print(f"ssvq {args.command}: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
