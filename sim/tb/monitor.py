"""Output-stream monitor: drives ``<prefix>_tready`` with seeded random
back-pressure and records every accepted beat.

Same timing convention as driver.py: ready is updated right after a rising
edge; valid/payload are sampled in the ReadOnly phase of that time step, and
``valid & ready`` there is a transfer at the next edge, on cycle
``sim_time // period``. The payload is only read when valid is high (memory
read data in the RTL has no reset value, so an idle payload may be X).
"""
from __future__ import annotations

import random
from typing import Callable

from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb.endpoint import StreamEndpoint


def resolve(value) -> int | str:
    """LogicArray -> int, or its binary string when it holds X/Z bits."""
    try:
        return value.to_unsigned()
    except (ValueError, AttributeError):
        return str(value)


class StreamMonitor(StreamEndpoint):
    """Accepts beats from ``<prefix>_tdata/tvalid`` and calls
    ``callback(value, cycle)`` for each (value: int, or a bit string with X/Z).

    ``ready`` is low in a cycle with probability ``stall_prob``. While
    ``watch`` is set, cycles with valid high and ready low are listed in
    ``stalled`` (the output half of the RTL's cnt_stall definition).
    """

    def __init__(self, dut, prefix: str = "m_axis", rng: random.Random | None = None,
                 stall_prob: float = 0.0, period_steps: int = 1,
                 callback: Callable[[int | str, int], None] | None = None, clk=None):
        super().__init__(dut, prefix, rng or random.Random(1), stall_prob, period_steps, clk,
                         owned="ready")
        self.callback = callback
        self.beats: list[tuple[int | str, int]] = []     # (value, cycle) of every beat
        self.stalled: list[int] = []
        self.tlast: list[int] = []                        # cycles of beats with tlast high

    async def _run(self):
        edge, ro = RisingEdge(self.clk), ReadOnly()
        valid, payload, ready = self.valid, self.payload, self.ready
        rng, p, period = self.rng, self.stall_prob, self.period
        beats, stalled = self.beats, self.stalled
        ready_high = False
        await edge
        while True:
            r = not (p > 0.0 and rng.random() < p)
            if r != ready_high:
                ready.value = 1 if r else 0
                ready_high = r
            await ro
            if str(valid.value) == "1":
                if r:
                    beat = (resolve(payload.value), get_sim_time() // period)
                    beats.append(beat)
                    if str(self.last.value) == "1":
                        self.tlast.append(beat[1])
                    if self.callback is not None:
                        self.callback(*beat)
                elif self.watch:
                    stalled.append(get_sim_time() // period)
            await edge
