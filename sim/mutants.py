"""Deliberately broken variants of the generated Verilog, to show that a check bites.

Each mutant is a text edit of hw.verilog.generate's output that must match exactly
once (a mutant that silently matched nothing would make its test pass vacuously).
"""
from __future__ import annotations

import re

from ssvq.errors import SimError


def _gearbox_level_not_reset(text: str) -> str:
    """The gearbox's fill level keeps its value through reset (the core domain's reset,
    `core_rst`, set by rst and soft reset, hw/top.py):
    bits of an interrupted stream stay in the gearbox and misalign the next layer's
    header."""
    mod = re.search(r"module \\ssvq_accel\.core\.loader\.gearbox .*?endmodule", text, re.S)
    if not mod:
        raise SimError("mutant gearbox-level-not-reset: no gearbox module in the Verilog")
    body = mod.group(0)
    nxt = re.search(r"level <= (\\\$\d+) ;", body)
    if not nxt:
        raise SimError("mutant gearbox-level-not-reset: no `level <=` in the gearbox")
    sig = re.escape(nxt.group(1))
    pat = re.compile(r"\n\s*if \(core_rst\) begin\n\s*" + sig + r"\s*= [^;]+;\n\s*end")
    new, n = pat.subn("", body)
    if n != 1:
        raise SimError(f"mutant gearbox-level-not-reset: expected one reset of {nxt.group(1)}, "
                       f"found {n}")
    return text[:mod.start()] + new + text[mod.end():]


MUTANTS = {"gearbox-level-not-reset": _gearbox_level_not_reset}


def mutate(text: str, name: str) -> str:
    if name not in MUTANTS:
        raise ValueError(f"mutant: expected one of {sorted(MUTANTS)}, found {name!r}")
    return MUTANTS[name](text)
