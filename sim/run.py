"""`ssvq sim`: run image layers on the RTL in cocotb and check them against
the golden model. Everything about the images is checked before anything is
built; bad input raises compress.image.ImageError / ssvq.cli.UserError (the
CLI prints one line and exits 2); a layer that fails on the RTL makes the
command return 1."""
from __future__ import annotations

import time
from pathlib import Path


def sim_cmd(args) -> int:
    from ssvq.cli import UserError
    from sim.runner import SimError, prepare_images, simulate_images

    if not 0.0 <= args.stall_prob < 1.0:
        raise UserError(f"--stall-prob: expected a probability in [0, 1), found {args.stall_prob}")
    if args.latency < 0:
        raise UserError(f"--latency: expected a number of cycles >= 0, found {args.latency}")
    images = Path(args.images)       # read_images raises ImageError if it holds no manifest
    t0 = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    # 1) every requested layer read and checked (raises ImageError) before building
    prepared = prepare_images(images, args.layers or None, progress)
    # 2) build, simulate, compare
    try:
        summary = simulate_images(images, args.layers or None, args.simulator, args.seed,
                                  args.stall_prob, args.latency, args.out, progress,
                                  prepared=prepared)
    except SimError as e:
        progress(f"FAILED: {e}")
        return 1
    n = len(summary["layers"])
    bad = [l["name"] for l in summary["layers"] if not l["passed"]]
    progress(f"{n - len(bad)}/{n} layers passed on {args.simulator}; "
             f"{summary['total_cycles_rtl']} cycles in {summary['sim_seconds']} s with start-up "
             f"({summary['layer_cycles_per_second']} cycles/s while running layers); summary in "
             f"{Path(args.out) / 'sim_summary.json'}")
    if bad:
        progress(f"FAILED: {', '.join(bad)}")
        return 1
    return 0
