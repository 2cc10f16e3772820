"""`ssvq demo`: compress (SSVQ, int8, int4) -> memory images -> one Verilog build
that runs all three -> cocotb simulation -> report."""
from __future__ import annotations

import json
import time
from pathlib import Path


def _say(msg: str, t0: float):
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


def demo_cmd(args) -> int:
    from compress.run import compress_model
    from hw.verilog import generate, lint
    from sim.report import format_summary, write_report
    from sim.runner import pick_layers, simulate_images
    from ssvq.config import AccelConfig
    from ssvq.image import read_images

    t0 = time.time()
    work, out = Path(args.work), Path(args.out)
    plans = {"ssvq": {"global": {"method": "ssvq", "k": args.k, "d": args.d}},
             "int8": {"global": {"method": "int8"}},
             "int4": {"global": {"method": "int4"}}}
    images = {}
    for name, plan in plans.items():
        _say(f"compressing {args.model} with {name} ({json.dumps(plan['global'])})", t0)
        images[name] = compress_model(args.model, plan, work / f"images-{name}", force=True,
                                      progress=lambda msg: _say("  " + msg, t0))
    sets = {n: read_images(p) for n, p in images.items()}
    build = AccelConfig.covering(
        [(s.layer_config(e["name"]), e["rows"], e["cols"])
         for s in sets.values() for e in s.manifest["layers"]])
    _say(f"one build for all three: {json.dumps(build.to_dict())}", t0)
    vfile = generate(build, work / "verilog")
    lint_result = lint(vfile)
    if lint_result.returncode != 0:
        print(lint_result.stdout + lint_result.stderr)
        _say(f"verilator --lint-only -Wall failed on {vfile}", t0)
        return 1
    _say(f"  {vfile} passes verilator --lint-only -Wall (waivers in hw/verilog.py)", t0)

    sims = {}
    for name, s in sets.items():
        names = pick_layers(s.manifest["layers"], args.all_layers)
        _say(f"simulating {len(names)} {name} layer(s) on {args.simulator}", t0)
        sims[name] = work / f"sim-{name}"
        simulate_images(images[name], names, args.simulator, seed=1, stall_prob=0.0,
                        latency=0, out_dir=sims[name], build_cfg=build,
                        progress=lambda msg: _say("  " + msg, t0))

    _say("writing report", t0)
    summary = write_report(images["ssvq"], out, sim_dir=sims["ssvq"],
                           baseline_images_dir=images["int8"], baseline_sim_dir=sims["int8"])
    int4 = write_report(images["int4"], out / "int4", sim_dir=sims["int4"],
                        baseline_images_dir=images["int8"], baseline_sim_dir=sims["int8"])
    print()
    for line in format_summary(summary):
        print(f"  {line}")
    print("  int4 images:")
    for line in format_summary(int4):
        print(f"    {line}")
    print(f"report: {out / 'report.md'} (int4: {out / 'int4' / 'report.md'})")
    ok = bool(summary["passed"] and int4["passed"])
    _say("done" if ok else "FAILED", t0)
    (out / "demo.json").write_text(json.dumps({"seconds": round(time.time() - t0, 1),
                                               "simulator": args.simulator,
                                               "build": build.to_dict(), "ok": ok}, indent=1))
    return 0 if ok else 1
