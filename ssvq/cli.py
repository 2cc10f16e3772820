"""The `ssvq` console script. Each subcommand's work lives with the part of the
project it belongs to; this module only parses arguments and reports errors."""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """Bad input from the user: printed as one clear line, exit status 2."""


def _compress(a):
    from compress.run import compress_cmd
    return compress_cmd(a)


def _verilog(a):
    from hw.verilog import verilog_cmd
    return verilog_cmd(a)


def _sim(a):
    from sim.run import sim_cmd
    return sim_cmd(a)


def _report(a):
    from sim.report import report_cmd
    return report_cmd(a)


def _demo(a):
    from ssvq.demo import demo_cmd
    return demo_cmd(a)


def _quality(a):
    from compress.quality import quality_cmd
    return quality_cmd(a)


def _synth(a):
    from hw.synth import synth_cmd
    return synth_cmd(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssvq", description="Compress PyTorch weights into SSVQ / VQ / int8 memory images, "
        "generate and verify the decode-and-MAC accelerator, and report its speedup.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model's weights into memory images")
    c.add_argument("--model", default="minilm",
                   help="minilm, digits, or a path to a state_dict .pt / .safetensors file")
    c.add_argument("--method", choices=["ssvq", "vq", "int8"], default="ssvq")
    c.add_argument("--k", type=int, default=256, help="codebook entries")
    c.add_argument("--d", type=int, default=8, help="vector length")
    c.add_argument("--mults", type=int, default=32, help="accelerator multipliers (lanes x d)")
    c.add_argument("--bus", type=int, default=64, help="accelerator bus width in bits")
    c.add_argument("--layers", nargs="*", help="only these layer names")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True, help="output image folder")
    c.set_defaults(func=_compress)

    v = sub.add_parser("verilog", help="generate the accelerator's Verilog")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="accelerator config JSON (fields of hw.config.AccelConfig)")
    src.add_argument("--images", help="image folder whose manifest holds the config")
    v.add_argument("--out", required=True)
    v.set_defaults(func=_verilog)

    s = sub.add_parser("sim", help="simulate layers in cocotb against the golden model")
    s.add_argument("--images", required=True)
    s.add_argument("--layers", nargs="*", help="layer names (default: all)")
    s.add_argument("--simulator", choices=["icarus", "verilator"], default="verilator")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--stall-prob", type=float, default=0.0,
                   help="probability of an input gap / output back-pressure each cycle")
    s.add_argument("--latency", type=int, default=0, help="memory model latency in cycles")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_sim)

    r = sub.add_parser("report", help="cost model, speedup and access-count report")
    r.add_argument("--images", required=True, help="compressed (ssvq/vq) image folder")
    r.add_argument("--baseline", help="int8 image folder of the same model")
    r.add_argument("--sim", help="folder written by `ssvq sim` for the compressed images")
    r.add_argument("--baseline-sim", help="folder written by `ssvq sim` for the int8 images")
    r.add_argument("--out", required=True)
    r.set_defaults(func=_report)

    d = sub.add_parser("demo", help="the whole flow on one model")
    d.add_argument("--model", default="minilm")
    d.add_argument("--k", type=int, default=256)
    d.add_argument("--d", type=int, default=8)
    d.add_argument("--simulator", choices=["icarus", "verilator"], default="verilator")
    d.add_argument("--all-layers", action="store_true", help="simulate every layer")
    d.add_argument("--out", default="reports/demo")
    d.add_argument("--work", default="build/demo", help="images, Verilog and sim output")
    d.set_defaults(func=_demo)

    q = sub.add_parser("quality", help="accuracy-per-bit evaluation of the compressors")
    q.add_argument("--model", choices=["digits", "minilm"], default="digits")
    q.add_argument("--budget-minutes", type=float, default=25.0,
                   help="MiniLM: training minutes of each ~2-bit model (SSVQ K=256 D=8, VQ "
                   "K=256 D=4); the ~3-bit group (SSVQ D=4, int4, int3) gets a fifth each, "
                   "so the default run trains 65 min in all. digits: below 5, fewer steps")
    q.add_argument("--methods", nargs="*", metavar="METHOD",
                   help="MiniLM: train only these (each for the full budget unless it is one "
                   "of the ~3-bit group): ssvq-k256-d8, vq-k256-d4, ssvq-k256-d4, "
                   "ssvq-k256-d8-reassign, int8, int4, int3")
    q.add_argument("--out", help="report folder (default reports/quality-<model>)")
    q.set_defaults(func=_quality)

    y = sub.add_parser("synth", help="FPGA synthesis (yosys + nextpnr-ecp5)")
    y.add_argument("--config", help="accelerator config JSON")
    y.add_argument("--out", required=True)
    y.set_defaults(func=_synth)
    return p


def main(argv=None) -> int:
    from compress.image import ImageError
    from hw.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except (UserError, ImageError, ConfigError) as e:
        print(f"ssvq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    # Run the package module's main, so `python -m ssvq.cli` and the console script
    # raise and catch the same UserError class.
    from ssvq.cli import main as _main
    sys.exit(_main())
