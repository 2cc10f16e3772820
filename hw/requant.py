"""Requantizer: int8 = saturate(((acc + bias) * mult + 2^(shift-1)) >> shift), with
the row's (bias, mult, shift) record read from the params memory. Saturation is
the output packer's first step."""
from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.memories import RecordMemory
from hw.records import ParamLayout
from ssvq.config import ACC_BITS, BIAS_BITS, MULT_BITS, PARAM_BITS, AccelConfig

ROUND_BITS = 64


class Requantizer(wiring.Component):
    LATENCY = 3      # params read, scale, round and shift

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.scaled_bits = ACC_BITS + 1 + MULT_BITS + 1
        super().__init__({
            "en": In(1),
            "w_en": In(1), "w_addr": In(range(cfg.max_rows)), "w_data": In(PARAM_BITS),
            "valid": In(1), "acc": In(signed(ACC_BITS)), "row": In(16), "lastrow": In(1),
            "o_valid": Out(1), "o_value": Out(signed(self.scaled_bits + 1)), "o_lastrow": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        en = self.en
        m.submodules.params = prm = RecordMemory(PARAM_BITS, self.cfg.max_rows)
        m.d.comb += [prm.w_en.eq(self.w_en), prm.w_addr.eq(self.w_addr),
                     prm.w_data.eq(self.w_data), prm.r_en.eq(en), prm.r_addr[0].eq(self.row)]
        acc1 = Signal(signed(ACC_BITS))
        v1, l1 = Signal(), Signal()
        with m.If(en):
            m.d.sync += [acc1.eq(self.acc), v1.eq(self.valid), l1.eq(self.lastrow)]
        rec = ParamLayout(prm.r_data[0])
        scaled = Signal(signed(self.scaled_bits))
        half = Signal(unsigned(ROUND_BITS))
        shift = Signal.like(rec.shift)
        v2, l2 = Signal(), Signal()
        biased = Signal(signed(ACC_BITS + 1))
        m.d.comb += biased.eq(acc1 + rec.bias)
        with m.If(en):
            m.d.sync += [scaled.eq(biased * rec.mult), v2.eq(v1), l2.eq(l1), shift.eq(rec.shift),
                         half.eq((Const(1, ROUND_BITS) << (rec.shift - 1)[:len(rec.shift)])
                                 [:ROUND_BITS])]
        # shift may exceed the product's width: the result is then 0 or -1, as exact
        # integer arithmetic gives (the rounding constant is 64 bits wide for that)
        with m.If(en):
            m.d.sync += [self.o_value.eq((scaled + half) >> shift), self.o_valid.eq(v2),
                         self.o_lastrow.eq(l2)]
        return m
