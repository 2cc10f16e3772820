"""`ssvq demo`: compress → memory images → Verilog → cocotb simulation → report."""
from __future__ import annotations

import json
import time
from pathlib import Path

from hw.config import AccelConfig


def _say(msg: str, t0: float):
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


def demo_cmd(args) -> int:
    from compress.image import read_images
    from compress.run import compress_model
    from hw.verilog import generate, lint
    from sim.report import write_report
    from sim.runner import pick_layers, simulate_images

    t0 = time.time()
    work, out = Path(args.work), Path(args.out)
    cfg = AccelConfig(k=args.k, d=args.d)
    images = {}
    for method in ("ssvq", "int8"):
        _say(f"compressing {args.model} with {method} (K={cfg.k}, D={cfg.d})", t0)
        images[method] = compress_model(args.model, method, cfg, work / f"images-{method}",
                                        progress=lambda msg: _say("  " + msg, t0))

    _say("generating Verilog", t0)
    vfile = generate(cfg, work / "verilog")
    lint_result = lint(vfile)
    if lint_result.returncode != 0:
        print(lint_result.stdout + lint_result.stderr)
        _say(f"verilator --lint-only -Wall failed on {vfile}", t0)
        return 1
    _say(f"  {vfile} passes verilator --lint-only -Wall (waivers in hw/verilog.py)", t0)

    entries = read_images(images["ssvq"]).manifest["layers"]
    names = pick_layers(entries, args.all_layers)
    sims = {}
    for method in ("ssvq", "int8"):
        _say(f"simulating {len(names)} {method} layer(s) on {args.simulator}", t0)
        sims[method] = work / f"sim-{method}"
        simulate_images(images[method], names, args.simulator, seed=1, stall_prob=0.0,
                        latency=0, out_dir=sims[method],
                        progress=lambda msg: _say("  " + msg, t0))

    _say("writing report", t0)
    summary = write_report(images["ssvq"], out, sim_dir=sims["ssvq"],
                           baseline_images_dir=images["int8"], baseline_sim_dir=sims["int8"])
    sim_rows = [r for r in summary["layers"] if r["simulated"]]
    ok = all(r["bit_exact"] and r["cycles_rtl"] == r["cycles_model"]
             and r["baseline_cycles_rtl"] == r["baseline_cycles_model"] for r in sim_rows)
    print()
    print(f"report: {out / 'report.md'}")
    print(f"  layers simulated: {len(sim_rows)} of {len(summary['layers'])}, "
          f"all bit-exact and cycle-exact: {ok}")
    print(f"  SSVQ bits/weight: {summary['bits_per_weight']:.3f}")
    print(f"  whole-model speedup over INT8: {summary['speedup']:.2f}x "
          f"(bandwidth bound {summary['speedup_bound']:.2f}x)")
    _say("done", t0)
    (out / "demo.json").write_text(json.dumps({"seconds": round(time.time() - t0, 1),
                                               "simulator": args.simulator,
                                               "layers_simulated": names, "ok": ok}, indent=1))
    return 0 if ok else 1
