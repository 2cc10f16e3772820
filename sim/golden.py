"""Golden model of the accelerator's timing (its values are ssvq.reference).

`timing` is a cycle model of the loader's two state machines and the gearbox
(hw/loader.py, hw/gearbox.py; docs/ARCH.md says the same in prose) with no stalls
on either side: it gives the cycle of every output beat and the final value of
every performance counter. The pipeline depth is the sum of the components'
declared latencies (hw.accel.PIPELINE_DEPTH), not a number kept here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hw.accel import PIPELINE_DEPTH
from hw.loader import SectionLoader
from ssvq.config import (ACT_BITS, COUNTERS, HEADER_BITS, PARAM_BITS, AccelConfig,
                         LayerConfig)

DECODE_CYCLES = SectionLoader.DECODE_CYCLES


@dataclass(frozen=True)
class Timing:
    out_cycles: tuple      # cycle (first header beat accepted = cycle 0) of each output beat
    counters: dict         # final performance counters
    weight_cycles: int     # cycles from the first to the last weight beat accepted, both in

    @property
    def bus_utilisation(self) -> float:
        """Weight beats per cycle of the weight phase."""
        return self.counters["weights"] / max(1, self.weight_cycles)


def timing(cfg: AccelConfig, lc: LayerConfig, rows: int, cols: int) -> Timing:
    return _timing(cfg, lc, rows, cols)


@lru_cache(maxsize=4096)
def _timing(cfg: AccelConfig, lc: LayerConfig, rows: int, cols: int) -> Timing:
    cfg.check_layer(lc, rows, cols)
    geo = cfg.geometry(lc, rows, cols)
    bus = cfg.bus
    cap = cfg.max_record_bits + 2 * bus
    order = [s for s in ("codebook", "params", "acts", "weights") if geo.beats[s]]
    width = {"idle": HEADER_BITS, "codebook": geo.record_bits["codebook"], "params": PARAM_BITS,
             "acts": cfg.mults * ACT_BITS, "weights": geo.group_bits}
    records = geo.records
    g = geo.groups_per_row

    counters = {c: 0 for c in COUNTERS}
    level = 0
    prev_level = 0         # the input's room test looks at the level a cycle late
    in_phase, in_left = "header", geo.beats["header"]
    phase, left, bitpos, dcnt = "idle", 1, 0, 0
    takes = np.zeros(rows * g, np.int64)     # take cycle of every weight group
    taken = 0
    first_w = last_w = None
    n = 0
    while True:
        # ---- combinational: input accept, record take
        accept = in_phase not in ("wait", "done") and prev_level + 2 * bus <= cap
        take = phase in width and level >= width[phase]
        consume = 0
        last = phase == "idle" or left == 1
        if take:
            w = width[phase]
            nxt = (bitpos + w) % bus
            consume = w + ((-nxt) % bus if last else 0)
        # ---- registered updates
        if accept:
            counters[in_phase] += 1
            if in_phase == "weights":
                first_w = n if first_w is None else first_w
                last_w = n
            in_left -= 1
            if in_left == 0:
                i = order.index(in_phase) + 1 if in_phase in order else None
                if in_phase == "header":
                    in_phase = "wait"
                elif i < len(order):
                    in_phase, in_left = order[i], geo.beats[order[i]]
                else:
                    in_phase = "done"
        if phase == "decode":
            if dcnt == DECODE_CYCLES - 1:
                phase, left, bitpos = order[0], records[order[0]], 0
                in_phase, in_left = order[0], geo.beats[order[0]]
            dcnt += 1
        elif take:
            bitpos = 0 if last else nxt
            left -= 1
            if phase == "idle":
                phase, dcnt = "decode", 0
            else:
                if phase == "weights":
                    takes[taken] = n
                    taken += 1
                if left == 0:
                    i = order.index(phase) + 1
                    if i < len(order):
                        phase, left = order[i], records[order[i]]
                    else:
                        break
        prev_level = level
        level += (bus if accept else 0) - consume
        n += 1
    per = bus // 8
    last_row = np.minimum(np.arange(cfg.out_beats(rows)) * per + per - 1, rows - 1)
    out_cycles = takes[last_row * g + g - 1] + PIPELINE_DEPTH
    counters["out"] = cfg.out_beats(rows)
    counters["cycles"] = int(out_cycles[-1]) + 1
    return Timing(tuple(int(c) for c in out_cycles), counters, last_w - first_w + 1)
