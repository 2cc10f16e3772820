"""Input gearbox: bus beats in, records of any width (set per cycle) out.

Every section of a layer stream is a bit string of equal-width records that may
straddle beats (docs/FORMAT.md). The gearbox keeps the stream's next `level`
bits at the bottom of a buffer; the consumer looks at `head` and drops
`consume` bits a cycle (a record, plus a section's padding after its last
record). A beat is accepted while `level + bus <= cap`, a test on registered
state only, so input ready never depends on the output side in the same cycle.
With cap >= widest record + 2*bus - 1 a consumer taking a record whenever one is
there never makes the input wait when records are at least a beat wide.
"""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class Gearbox(wiring.Component):
    LATENCY = 1       # a beat accepted in cycle n is in `head`/`level` from cycle n+1

    def __init__(self, bus: int, width: int):
        self.bus, self.width = bus, width
        self.cap = width + 2 * bus
        super().__init__({
            "i_valid": In(1), "i_data": In(bus), "i_allow": In(1), "i_ready": Out(1),
            "consume": In(range(self.cap + 1)),
            "head": Out(width), "level": Out(range(self.cap + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        buf = Signal(self.cap)
        accept = Signal()
        kept = Signal(range(self.cap + 1))
        m.d.comb += [
            self.i_ready.eq(self.i_allow & (self.level + self.bus <= self.cap)),
            accept.eq(self.i_valid & self.i_ready),
            kept.eq(self.level - self.consume),
            self.head.eq(buf[:self.width]),
        ]
        m.d.sync += [
            buf.eq((buf >> self.consume) | Mux(accept, self.i_data << kept, 0)),
            self.level.eq(kept + Mux(accept, self.bus, 0)),
        ]
        return m
