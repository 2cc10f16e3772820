"""Input gearbox: bus beats in, records of any width (set per cycle) out.

Every section of a layer stream is a bit string of equal-width records that may
straddle beats (docs/FORMAT.md). The gearbox holds the stream's next `level`
bits; the consumer drops a record a cycle (plus a section's padding after its last
record) and sees the record it took on `head` LATENCY
cycles later. A beat is accepted in cycle n while `level(n-1) + 2*bus <= cap`: a
flag registered from the level of the cycle before (safe: at most one beat came in
since), so input ready is a flip-flop, never depends on the output side, and the
level compare is off the accept path. With cap = widest record + 2*bus a consumer
taking a record whenever one is there still takes one beat a cycle when records are
at least a beat wide (sim/golden.py; tests/test_cost.py).

The consumer says which record it takes: `take` (a record this cycle), `last` (its
section's last: the padding after it is dropped too) and the two widths of the
section, `rec_width` and `rec_width_last` (registers of the consumer's, loaded when a section
starts). `fits` says the record the consumer wants is there (level >= its width); it
is a register, worked out a cycle ahead, so the take decision (want & fits) is one gate
of flip-flops and the level compare is off the take path. For that the consumer names
the width its next record needs in each case: `need_stay` (nothing taken now: this
record's width), `need_new` with `new` (nothing taken now and a new width from the next
cycle on: a section's start after the header, or the next header), `need_take`
(2 x width: a take leaves level - width, which must hold another record of the same
width) and `need_last` (width_last + the next section's width). Each is compared with
level and with level + bus (a beat accepted now) in parallel; new, take, last and
accept only choose among the eight results. The next level is picked from level, level - width
and level - width_last, worked out in parallel too, so the take feeds only a
multiplexer in front of the one short increment that adds an accepted beat.

The bits sit in a ring of `size` bits (a power of two, at least cap), written a
whole beat at a time at word `wptr` and read from bit `rptr`; rptr + level is
always wptr's bit position, so a beat never lands on unread bits and nothing is
shifted in place. The read is a rotation by rptr in three registered stages
(whole beats, whole bytes of the offset inside a beat, the bits left), out of the path that decides
how many bits to drop: that path is only the level and pointer arithmetic.
All three read stages are clocked by `en` (the pipeline enable), so a record on its
way to `head` is frozen with the pipeline behind it.
"""
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class Gearbox(wiring.Component):
    LATENCY = 3       # a record taken in cycle n is on `head` in cycle n+3

    def __init__(self, bus: int, width: int):
        self.bus, self.width = bus, width
        self.cap = width + 2 * bus
        words = 1 << (-(-self.cap // bus) - 1).bit_length()
        self.words, self.size = words, words * bus
        super().__init__({
            "i_valid": In(1), "i_data": In(bus), "i_allow": In(1), "i_ready": Out(1),
            "take": In(1), "last": In(1), "rec_width": In(range(self.cap + 1)),
            "rec_width_last": In(range(self.cap + 1)),
            "need_stay": In(range(self.cap + 1)), "need_new": In(range(self.cap + 1)),
            "new": In(1), "need_take": In(range(2 * self.cap + 1)),
            "need_last": In(range(2 * self.cap + 1)), "fits": Out(1), "en": In(1),
            "head": Out(width), "level": Out(range(self.cap + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        bus, words = self.bus, self.words
        lb = bus.bit_length() - 1
        ring = [Signal(bus, name=f"ring{w}") for w in range(words)]
        wptr = Signal(range(words))
        rptr = Signal(range(self.size))
        accept = Signal()
        room = Signal(init=1)
        m.d.sync += room.eq(self.level <= self.cap - 2 * bus)
        m.d.comb += [
            self.i_ready.eq(self.i_allow & room),
            accept.eq(self.i_valid & self.i_ready),
        ]
        with m.If(accept):
            m.d.sync += wptr.eq(wptr + 1)
            with m.Switch(wptr):
                for w in range(words):
                    with m.Case(w):
                        m.d.sync += ring[w].eq(self.i_data)
        level = self.level
        less_w = Signal(range(-self.cap - 1, self.cap + 1))
        less_wl = Signal(range(-self.cap - 1, self.cap + 1))
        m.d.comb += [less_w.eq(level - self.rec_width),
                     less_wl.eq(level - self.rec_width_last)]
        left = Signal(range(self.cap + 1))
        m.d.comb += left.eq(Mux(self.take, Mux(self.last, less_wl, less_w), level))
        # an accepted beat adds `bus`: an increment of the bits above the beat offset
        m.d.sync += self.level.eq(Mux(accept, left + bus, left))
        # fits for the next cycle: level(next) >= width(next), from the three cases the
        # consumer describes, each against level and level + bus (`level_bus`, kept
        # beside level so no adder sits in front of the compares)
        level_bus = Signal(range(self.cap + bus + 1), init=bus)
        m.d.sync += level_bus.eq(Mux(accept, left + 2 * bus, left + bus))

        def need(n):
            return Mux(accept, level_bus >= n, level >= n)
        m.d.sync += self.fits.eq(Mux(self.new, need(self.need_new),
                                     Mux(self.take, Mux(self.last, need(self.need_last),
                                                        need(self.need_take)),
                                         need(self.need_stay))))
        with m.If(self.take):
            m.d.sync += rptr.eq(Mux(self.last, rptr + self.rec_width_last,
                                    rptr + self.rec_width))

        # read stage 1: the beats from rptr's word on (enough for a record at any offset)
        span = -(-self.width // bus) + 1
        window = Signal(span * bus)
        off = Signal(lb)
        q = rptr[lb:] if words > 1 else 0
        for k in range(span):
            sel = Signal(bus, name=f"win{k}")
            with m.Switch(q):
                for w in range(words):
                    with m.Case(w):
                        m.d.comb += sel.eq(ring[(w + k) % words])
            with m.If(self.en):
                m.d.sync += window.word_select(k, bus).eq(sel)
        # read stage 2: the whole bytes of the offset inside the first beat; stage 3: the
        # bits left (one 64-way shift in one stage was the loader's slowest path alone)
        part = Signal(self.width + 7)
        bit = Signal(3)
        with m.If(self.en):
            m.d.sync += [off.eq(rptr[:lb]), bit.eq(off[:3]),
                         part.eq((window >> (off[3:] << 3))[:len(part)]),
                         self.head.eq((part >> bit)[:self.width])]
        return m
