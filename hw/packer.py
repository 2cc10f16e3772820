"""Output packer: saturates each row's value to int8 and packs bus/8 rows per
output beat (row 0 in the low byte; the layer's last beat zero-padded). Owns the
output stream's valid register; `en` low (the beat is waiting) freezes the
pipeline behind it."""
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ssvq.config import OUT_BITS, AccelConfig


class OutputPacker(wiring.Component):
    LATENCY = 2      # saturate, pack

    def __init__(self, cfg: AccelConfig, value_bits: int):
        self.cfg = cfg
        super().__init__({
            "valid": In(1), "value": In(signed(value_bits)), "lastrow": In(1),
            "start": In(1),                     # a new layer: start an empty beat
            "o_stream": Out(stream.Signature(cfg.bus)),
            "en": Out(1), "layer_done": Out(1),
            "o_last": Out(1),                   # the beat on o_stream is the layer's last
        })

    def elaborate(self, platform):
        bus = self.cfg.bus
        per = bus // OUT_BITS
        m = Module()
        o = self.o_stream
        o_last = self.o_last
        # Output register plus one skid register. The pipeline enable is the skid being
        # empty, a flip-flop: output ready reaches no pipeline register in the same cycle
        # (it would fan out to every one of them). When a beat waits, the pipeline runs
        # one more cycle and a beat it completes then goes to the skid; the freeze
        # starts the cycle after. With a ready sink the skid stays empty.
        skid = Signal(bus)
        skid_valid = Signal()
        skid_last = Signal()
        accepted = Signal()
        m.d.comb += [self.en.eq(~skid_valid), accepted.eq(o.valid & o.ready),
                     self.layer_done.eq(accepted & o_last)]
        # saturation in a stage of its own: the value fits int8 when its bits from 7 up
        # are all equal (AND / OR reductions, not two 60-bit compares on carry chains)
        y = Signal(signed(OUT_BITS))
        valid, lastrow = Signal(), Signal()
        v = self.value
        hi = v.as_unsigned()[OUT_BITS - 1:]
        over = ~v[-1] & hi.any()                 # > 127
        under = v[-1] & ~hi.all()                # < -128
        with m.If(self.en):
            m.d.sync += [y.eq(Mux(over, 127, Mux(under, -128, v[:OUT_BITS]))),
                         valid.eq(self.valid), lastrow.eq(self.lastrow)]
        pack = Signal(bus)
        # the byte the next row goes to, one-hot (each byte of the beat is then a 2-way
        # choice by one flip-flop, no decode of an index in front of 64 multiplexers)
        sel = Signal(per, init=1)
        full = sel[per - 1]
        packed = Signal(bus)
        for i in range(per):
            m.d.comb += packed.word_select(i, OUT_BITS).eq(
                Mux(sel[i], y, pack.word_select(i, OUT_BITS)))
        emit = Signal()
        m.d.comb += emit.eq(self.en & valid & (full | lastrow))
        with m.If(accepted):
            m.d.sync += o.valid.eq(0)
            with m.If(skid_valid):          # the skid's beat moves up
                m.d.sync += [o.valid.eq(1), o.payload.eq(skid), o_last.eq(skid_last),
                             skid_valid.eq(0)]
        with m.If(emit):
            with m.If(~o.valid | accepted):
                m.d.sync += [o.valid.eq(1), o.payload.eq(packed), o_last.eq(lastrow)]
            with m.Else():
                m.d.sync += [skid_valid.eq(1), skid.eq(packed), skid_last.eq(lastrow)]
        with m.If(self.en & valid):
            with m.If(full | lastrow):
                m.d.sync += [pack.eq(0), sel.eq(1)]
            with m.Else():
                m.d.sync += [pack.eq(packed), sel.eq(sel << 1)]
        with m.If(self.start):
            m.d.sync += [pack.eq(0), sel.eq(1)]
        return m
