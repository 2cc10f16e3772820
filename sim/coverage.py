"""Functional coverage of the stream regressions: which input beats saw an input gap
or output back-pressure, at the places where the loader changes state.

A bin is (mode, section, position, event):
  mode      the decode path: int, vq, ssvq, and vq-m2 / ssvq-m2 (two codewords per vector)
  section   header, codebook, params, acts, weights (docs/FORMAT.md, section 5)
  position  first / last beat of the section, or block: the weight beat holding the first
            group of an output block (the bus/8 rows of one output beat) other than the first
  event     gap: the source withheld the beat at least one cycle while it was next;
            backpressure: o_stream was valid and not ready in a cycle before the beat was
            accepted while the source offered it or withheld it by a gap
The in-simulation testbench (sim/tb/memstream.v) counts hits per layer; this module
names the bins, says which are necessary, merges runs and reports.

Back-pressure can only be seen where an output beat can be pending: during a layer's
weights (from its second block on), and at a queued header while the previous layer
drains (overlapped runs). A layer's header is accepted only after the previous layer's
last output beat and its first output beat needs its first row's last weight group
(docs/ARCH.md), so back-pressure at the last beat of a header of more than one beat, in
the load sections and at the first weight beat cannot happen; those bins are not
necessary (a one-beat header, on a 128-bit bus, is its own first and last beat).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssvq.config import OUT_BITS, SECTIONS, AccelConfig, LayerConfig

POSITIONS = ("first", "last", "block")
EVENTS = ("gap", "backpressure")
BINS_PER_LAYER = 32          # memstream.v: section*6 + position*2 + event < 32


def bin_index(section: str, position: str, event: str) -> int:
    return (SECTIONS.index(section) * 6 + POSITIONS.index(position) * 2
            + EVENTS.index(event))


def bin_name(section: str, position: str, event: str) -> str:
    return f"{section}.{position}.{event}"


ALL_BINS = [(s, p, e) for s in SECTIONS for p in POSITIONS for e in EVENTS
            if p != "block" or s == "weights"]


def mode_key(lc: LayerConfig) -> str:
    return lc.mode + ("-m2" if lc.m > 1 else "")


def marks(cfg: AccelConfig, lc: LayerConfig, rows: int, cols: int) -> np.ndarray:
    """One byte per beat of the layer's stream: bits 2..0 the section's index in
    SECTIONS, bit 3 its first beat, bit 4 its last beat, bit 5 a block boundary."""
    geo = cfg.geometry(lc, rows, cols)
    out = np.zeros(geo.total_beats, np.uint8)
    for i, s in enumerate(SECTIONS):
        first, n = geo.first_beat(s), geo.beats[s]
        if n:
            out[first:first + n] |= i
            out[first] |= 1 << 3
            out[first + n - 1] |= 1 << 4
    per = cfg.bus // OUT_BITS
    g = geo.groups_per_row
    w0 = geo.first_beat("weights")
    for r in range(per, rows, per):
        out[w0 + (r * g * geo.group_bits) // cfg.bus] |= 1 << 5
    return out


def necessary(mode: str, has_blocks: bool, overlapped: bool) -> list[tuple]:
    """The bins a regression must hit for a mode (see the module docstring)."""
    sections = [s for s in SECTIONS if not (s == "codebook" and mode == "int")]
    need = [(s, p, "gap") for s in sections for p in ("first", "last")]
    need.append(("weights", "last", "backpressure"))
    if has_blocks:
        need += [("weights", "block", "gap"), ("weights", "block", "backpressure")]
    if overlapped:
        need.append(("header", "first", "backpressure"))
    return need


def layer_hits(counts: list[int]) -> dict:
    """Counts of one layer (BINS_PER_LAYER integers from the testbench) -> {bin name: hits}."""
    return {bin_name(*b): int(counts[bin_index(*b)]) for b in ALL_BINS}


def read_cov_file(path: Path, n_layers: int) -> list[dict]:
    """The testbench's $writememh dump -> per layer {bin name: hits}."""
    vals = []
    for line in Path(path).read_text().splitlines():
        for w in line.split("//")[0].split():       # simulators add "// 0x<address>" lines
            vals.append(int(w, 16) if all(c in "0123456789abcdefABCDEF" for c in w) else 0)
    return [layer_hits(vals[i * BINS_PER_LAYER:(i + 1) * BINS_PER_LAYER])
            for i in range(n_layers)]


class Coverage:
    """Merged hits over many runs: {mode: {bin: hits}}, and what was necessary."""

    def __init__(self):
        self.hits: dict[str, dict[str, int]] = {}
        self.need: dict[str, set] = {}
        self.runs = 0

    def add(self, mode: str, hits: dict, has_blocks: bool, overlapped: bool):
        m = self.hits.setdefault(mode, {bin_name(*b): 0 for b in ALL_BINS})
        for k, v in hits.items():
            m[k] += int(v)
        self.need.setdefault(mode, set()).update(
            bin_name(*b) for b in necessary(mode, has_blocks, overlapped))

    def add_result(self, r: dict):
        """A layer's result.json (written by the memstream testbench)."""
        cov = r.get("coverage")
        if not cov:
            return
        self.add(cov["mode"], cov["hits"], cov["has_blocks"], r.get("overlap", False))
        self.runs += 1

    def missing(self) -> list[str]:
        return sorted(f"{m} {b}" for m, bins in self.need.items() for b in bins
                      if self.hits[m].get(b, 0) == 0)

    def to_dict(self) -> dict:
        return {"layers": self.runs, "hits": self.hits,
                "necessary": {m: sorted(b) for m, b in self.need.items()},
                "missing": self.missing()}

    def table(self) -> str:
        modes = sorted(self.hits)
        lines = ["| bin | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
        for b in ALL_BINS:
            name = bin_name(*b)
            cells = []
            for m in modes:
                v = self.hits[m].get(name, 0)
                need = name in self.need.get(m, ())
                cells.append(f"{v}" + ("" if need else " (n/a)" if v == 0 else ""))
                if need and v == 0:
                    cells[-1] = "**0 MISSING**"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    @classmethod
    def from_results(cls, paths) -> "Coverage":
        c = cls()
        for p in paths:
            c.add_result(json.loads(Path(p).read_text()))
        return c
