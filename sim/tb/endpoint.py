"""What the stream driver and monitor share: the signals of one AXI4-Stream port
(``<prefix>_tdata/_tvalid/_tready/_tlast``), a seeded stall source, and one
background coroutine."""
from __future__ import annotations

import random


class StreamEndpoint:
    """`owned` is the signal this side drives (valid for a source, ready for a sink)."""

    def __init__(self, dut, prefix: str, rng: random.Random, stall_prob: float,
                 period_steps: int, clk, owned: str):
        self.clk = clk if clk is not None else dut.clk
        self.payload = getattr(dut, f"{prefix}_tdata")
        self.valid = getattr(dut, f"{prefix}_tvalid")
        self.ready = getattr(dut, f"{prefix}_tready")
        self.last = getattr(dut, f"{prefix}_tlast")
        self.rng = rng
        self.stall_prob = float(stall_prob)
        self.period = int(period_steps)
        self.watch = False
        self._owned = getattr(self, owned)
        self._task = None

    def start(self):
        import cocotb
        self._owned.value = 0
        self._task = cocotb.start_soon(self._run())
        return self._task

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self):
        raise NotImplementedError
