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
beats; during a random gap the payload carries random junk (valid low), so
a DUT that looks at the payload without valid shows up.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, ReadOnly, RisingEdge

from sim.tb.endpoint import StreamEndpoint


@dataclass
class Transfer:
    """One queued burst (a layer's stream) and what happened to it."""
    beats: list[int]
    on_first: Callable[[int], None] | None = None   # called with the first beat's cycle
    on_last: Callable[[int], None] | None = None    # called (after the edge) when all are in
    done: Event = field(default_factory=Event)
    first_cycle: int | None = None
    last_cycle: int | None = None
    accepted: int = 0
    gaps: int = 0               # cycles a beat was withheld on purpose


class StreamDriver(StreamEndpoint):
    """Feeds queued bursts of beats (python ints) into ``<prefix>_tdata/tvalid/tready``,
    with ``tlast`` high on each burst's last beat (a burst is one layer stream).

    ``send(beats)`` queues one layer's stream and returns its Transfer; bursts
    follow each other in order. The first beat of a burst is presented
    ``latency`` cycles after the burst becomes current (memory latency); after
    that, each cycle a new beat could be presented it is withheld with
    probability ``stall_prob`` (from ``rng``: reproducible from the seed).

    From the first accepted beat on, cycles in which the DUT is ready while
    valid is low are listed in ``idle_ready`` (the input half of the RTL's
    cnt_stall definition; the caller picks the busy cycles out of it).
    """

    def __init__(self, dut, prefix: str = "s_axis", rng: random.Random | None = None,
                 stall_prob: float = 0.0, latency: int = 0, period_steps: int = 1, clk=None):
        super().__init__(dut, prefix, rng or random.Random(0), stall_prob, period_steps, clk,
                         owned="valid")
        self.latency = int(latency)
        self.queue: deque[Transfer] = deque()
        self.current: Transfer | None = None
        self.idle_ready: list[int] = []

    def send(self, beats: list[int], on_first=None, on_last=None) -> Transfer:
        t = Transfer(list(beats), on_first, on_last)
        self.queue.append(t)
        return t

    async def _run(self):
        edge, ro = RisingEdge(self.clk), ReadOnly()
        valid, payload, ready, last = self.valid, self.payload, self.ready, self.last
        last.value = 0
        rng, p, period, queue = self.rng, self.stall_prob, self.period, self.queue
        idle_ready = self.idle_ready
        width = len(payload)
        cur: Transfer | None = None
        beats: list[int] = []
        pos = wait = 0
        presenting = False          # valid is high with beats[pos]
        valid_high = False
        finished: Transfer | None = None
        await edge
        while True:
            # ---- right after the edge
            if finished is not None:            # signal completion outside ReadOnly
                finished.done.set()
                if finished.on_last is not None:
                    finished.on_last(finished.last_cycle)
                finished = None
            if not presenting:
                if cur is None and queue:
                    cur = self.current = queue.popleft()
                    beats, pos, wait = cur.beats, 0, self.latency
                if cur is not None:
                    if wait > 0:
                        wait -= 1
                    elif p > 0.0 and rng.random() < p:
                        cur.gaps += 1
                        payload.value = rng.getrandbits(width)   # junk while valid is low
                    else:
                        payload.value = beats[pos]
                        last.value = int(pos == len(beats) - 1)
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
                        if pos == 0:
                            cur.first_cycle = cyc
                            self.watch = True
                            if cur.on_first is not None:
                                cur.on_first(cyc)
                        cur.last_cycle = cyc
                        pos += 1
                        cur.accepted = pos
                        presenting = False
                        if pos == len(beats):
                            finished, cur = cur, None
                            self.current = None
                    else:
                        idle_ready.append(get_sim_time() // period)
            await edge
