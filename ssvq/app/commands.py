"""The `ssvq verilog | sim | report | synth` commands: argument checks, then the
work of hw/ and sim/. Every bad input raises an ssvq.errors error (one line,
exit status 2) before anything is built or written."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ssvq.config import AccelConfig
from ssvq.errors import SimError, UserError
from ssvq.files import load_json


def load_build_config(path: str) -> AccelConfig:
    """An accelerator build config JSON (missing fields take the defaults)."""
    data = load_json(path, UserError, "a config JSON file")
    return AccelConfig.from_dict(data, path, partial=True)


def verilog_cmd(args) -> int:
    from hw.verilog import generate
    from ssvq.image import read_images

    cfg = read_images(args.images).config if args.images else load_build_config(args.config)
    v = generate(cfg, args.out, target=getattr(args, "target", "ecp5"))
    print(f"wrote {v} ({v.stat().st_size // 1024} KiB), ssvq_regs.h, regs.md, "
          f"ssvq_accel.core and {Path(args.out) / 'params.json'} "
          f"for {json.dumps(cfg.to_dict())}")
    return 0


def sim_cmd(args) -> int:
    from sim.runner import pick_layers, prepare_images, simulate_images
    from ssvq.image import read_images

    for flag in ("stall_prob", "stall_prob_in", "stall_prob_out"):
        v = getattr(args, flag)
        if v is not None and not 0.0 <= v < 1.0:
            raise UserError(f"--{flag.replace('_', '-')}: expected a probability in [0, 1), "
                            f"found {v}")
    if args.stimulus == "python" and (args.stall_prob_in is not None
                                      or args.stall_prob_out is not None):
        raise UserError("--stall-prob-in/--stall-prob-out: expected --stimulus memstream "
                        "(the python driver has one --stall-prob), found --stimulus python")
    if args.latency < 0:
        raise UserError(f"--latency: expected a number of cycles >= 0, found {args.latency}")
    build_cfg = load_build_config(args.build_config) if args.build_config else None
    t0 = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    imgs = read_images(args.images)
    names = args.layers or pick_layers(imgs.manifest["layers"], args.all)
    # every requested layer read and checked (ImageError / ConfigError) before building
    prepared = prepare_images(args.images, names, progress, build_cfg)
    try:
        summary = simulate_images(args.images, names, args.simulator, args.seed,
                                  args.stall_prob, args.latency, args.out, progress,
                                  prepared=prepared, overlap=args.overlap,
                                  stimulus=args.stimulus, stall_prob_in=args.stall_prob_in,
                                  stall_prob_out=args.stall_prob_out, waves=args.waves)
    except SimError as e:
        progress(f"FAILED: {e}")
        return 1
    n = len(summary["layers"])
    bad = [l["name"] for l in summary["layers"] if not l["passed"]]
    progress(f"{n - len(bad)}/{n} layers passed on {args.simulator}; "
             f"{summary['total_cycles_rtl']} cycles in {summary['sim_seconds']} s with start-up "
             f"({summary['layer_cycles_per_second']} cycles/s while running layers, "
             f"{summary['stimulus']} stimulus); summary in "
             f"{Path(args.out) / 'sim_summary.json'}")
    if bad:
        progress(f"FAILED: {', '.join(bad)}")
        return 1
    return 0


def report_cmd(args) -> int:
    from sim.report import format_summary, write_report

    s = write_report(args.images, args.out, sim_dir=args.sim,
                     baseline_images_dir=args.baseline, baseline_sim_dir=args.baseline_sim)
    for line in format_summary(s):
        print(f"ssvq report: {line}")
    print(f"ssvq report: wrote {Path(args.out) / 'report.md'}")
    if not s["passed"]:
        print("ssvq report: FAILED (simulation failures or cost-model/RTL mismatches above)",
              file=sys.stderr)
        return 1
    return 0


def synth_cmd(args) -> int:
    from hw.synth import SynthError, synthesize

    cfg = load_build_config(args.config) if args.config else AccelConfig()
    text = getattr(args, "speeds", "6,8")
    try:
        speeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        speeds = ()
    if not speeds or any(v not in (6, 7, 8) for v in speeds) or len(set(speeds)) != len(speeds):
        raise UserError(f"--speeds: expected distinct ECP5 speed grades from 6, 7, 8, comma "
                        f"separated, found {text!r}")
    try:
        s = synthesize(cfg, args.out, speeds=speeds)
    except SynthError as e:
        raise UserError(str(e)) from None
    from hw.synth import table
    print(table(s), end="")
    print(f"wrote {Path(args.out) / 'synth.json'} and synth.md")
    return 0
