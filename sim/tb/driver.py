"""Input-stream driver: a memory model that feeds beats through valid/ready.

Signal timing (one coroutine; one or two triggers per cycle):
  * right after a rising edge the driver sets ``valid``/``payload`` for the
    cycle that starts there;
  * in the ReadOnly phase of the same time step (everything settled, nothing
    changes before the next edge) it samples ``ready``: ``valid & ready`` there
    means the beat transfers at the next rising edge.
The cycle index of a transfer is the sim time of that ReadOnly phase divided by
the clock period (cycle c = the cycle whose closing edge moves the beat); the
monitor uses the same convention, so cycles of both sides compare directly.

Stream rules kept: valid never depends on ready; once valid is raised the beat
(payload included) is held until accepted; gaps are only inserted between
beats.
"""
from __future__ import annotations

import random

from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, ReadOnly, RisingEdge


class StreamDriver:
    """Feeds lists of beats (python ints) into ``<prefix>__payload/valid/ready``.

    ``send(beats)`` queues one layer's beats and returns an Event set when the
    last one is accepted. The first beat of each ``send`` is presented
    ``latency`` cycles after the call (memory latency); after that, each cycle
    a new beat could be presented it is withheld with probability
    ``stall_prob`` (drawn from ``rng``, so runs are reproducible from the seed).

    Per layer (``self.layer``): cycle the first beat (the header) and the last
    beat were accepted, beats accepted, gap cycles inserted, and
    ``idle_ready``: cycles from the header on (until ``watch`` is cleared) in
    which the DUT was ready while valid was low -- the input half of the
    RTL's cnt_stall definition.
    """

    def __init__(self, dut, prefix: str = "i_stream", rng: random.Random | None = None,
                 stall_prob: float = 0.0, latency: int = 0, period_steps: int = 1, clk=None):
        self.clk = clk if clk is not None else dut.clk
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.rng = rng or random.Random(0)
        self.stall_prob = float(stall_prob)
        self.latency = int(latency)
        self.period = int(period_steps)
        self._beats: list[int] = []
        self._pos = 0
        self._wait = 0
        self._done: Event | None = None
        self.watch = False
        self.on_first = None        # callback(cycle) when a layer's first beat is accepted
        self.layer: dict = {}
        self._task = None

    def start(self):
        import cocotb
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())
        return self._task

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def send(self, beats: list[int]) -> Event:
        if self._pos < len(self._beats):
            raise RuntimeError("StreamDriver.send while a previous layer is still being sent")
        self._beats = list(beats)
        self._pos = 0
        self._wait = self.latency
        self._done = Event()
        self.layer = {"first_cycle": None, "last_cycle": None, "accepted": 0, "gaps": 0,
                      "idle_ready": []}
        return self._done

    @property
    def position(self) -> int:
        """Beats of the current layer accepted so far."""
        return self._pos

    async def _run(self):
        edge, ro = RisingEdge(self.clk), ReadOnly()
        valid, payload, ready = self.valid, self.payload, self.ready
        rng, p, period = self.rng, self.stall_prob, self.period
        presenting = False          # valid is high with beat self._pos
        valid_high = False
        finished = False            # last beat accepted: set the Event after the edge
        await edge
        while True:
            if finished:
                finished = False
                self._done.set()
            # ---- right after the edge: what to present in this cycle
            if not presenting:
                if self._pos < len(self._beats):
                    if self._wait > 0:
                        self._wait -= 1
                    elif p > 0.0 and rng.random() < p:
                        self.layer["gaps"] += 1
                    else:
                        payload.value = self._beats[self._pos]
                        presenting = True
                if presenting != valid_high:
                    valid.value = 1 if presenting else 0
                    valid_high = presenting
            # ---- ReadOnly: sample the handshake the next edge will perform
            if presenting or self.watch:
                await ro
                if str(ready.value) == "1":
                    if presenting:
                        cyc = get_sim_time() // period
                        lay = self.layer
                        if self._pos == 0:
                            lay["first_cycle"] = cyc
                            self.watch = True
                            if self.on_first is not None:
                                self.on_first(cyc)
                        lay["last_cycle"] = cyc
                        self._pos += 1
                        lay["accepted"] = self._pos
                        presenting = False
                        if self._pos == len(self._beats):
                            finished = True
                    else:
                        self.layer["idle_ready"].append(get_sim_time() // period)
            await edge
