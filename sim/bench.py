"""Whole-model simulation speed: every layer of image sets on both simulators.

    python -m sim.bench WORK [--sets ssvq int8] [--simulators verilator icarus] --out DIR

WORK is an `ssvq demo` work folder (images-<set>/). Writes DIR/sim-speed.json and .md:
per set and simulator the cycles simulated, the wall-clock and CPU-time rates while
layers run, the whole run with start-up, and whether every layer passed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sim.runner import simulate_images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.bench")
    ap.add_argument("work")
    ap.add_argument("--sets", nargs="*", default=["ssvq", "int8"])
    ap.add_argument("--simulators", nargs="*", default=["verilator", "icarus"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rows = []
    for sim in a.simulators:
        for name in a.sets:
            images = Path(a.work) / f"images-{name}"
            t = time.perf_counter()
            s = simulate_images(images, None, sim, out_dir=Path(a.work) / f"bench-{sim}-{name}",
                                progress=None)
            rows.append({"set": name, "simulator": sim, "layers": len(s["layers"]),
                         "cycles": s["total_cycles_rtl"],
                         "layer_cycles_per_second": s["layer_cycles_per_second"],
                         "layer_cycles_per_cpu_second": s["layer_cycles_per_cpu_second"],
                         "sim_seconds_with_startup": s["sim_seconds"],
                         "seconds_with_checks_and_build": round(time.perf_counter() - t, 1),
                         "all_passed": s["all_passed"]})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim-speed.json").write_text(json.dumps(rows, indent=1))
    lines = ["| set | simulator | layers | cycles | cycles/s (layers, wall) | cycles per CPU s | "
             "sim s (with start-up) | all passed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['simulator']} | {r['layers']} | {r['cycles']:,} | "
                     f"{r['layer_cycles_per_second']:,.0f} | "
                     f"{(r['layer_cycles_per_cpu_second'] or 0):,.0f} | "
                     f"{r['sim_seconds_with_startup']} | {r['all_passed']} |")
    (out / "sim-speed.md").write_text("# Whole-MiniLM simulation speed (memstream stimulus)\n\n"
                                      + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["all_passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
