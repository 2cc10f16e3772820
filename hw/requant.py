"""Requantizer: int8 = saturate(((acc + bias) * mult + 2^(shift-1)) >> shift), with
the row's (bias, mult, shift) record read from the params memory. Saturation is
the output packer's first step."""
from amaranth.hdl import Cat, Const, Module, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.memories import RecordMemory
from hw.prims import RegisteredMult
from hw.records import ParamLayout
from ssvq.config import ACC_BITS, MULT_BITS, PARAM_BITS, AccelConfig

ROUND_BITS = 64


# (acc + bias) is split into unsigned 17-bit limbs and a signed top limb, so each
# partial product is one 18x18 hard multiplier with an unsigned 16-bit mult.
LIMB = 17


class Requantizer(wiring.Component):
    # params read (2, through the memory's output register), bias, limb products (2,
    # registered hard multipliers), two partial-sum adds, rounding add, shift: each
    # stage one carry chain, one multiplier or three shifter levels (shift: 2)
    LATENCY = RecordMemory.LATENCY + 1 + RegisteredMult.LATENCY + 2 + 1 + 2

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

        def delay(value, n, name):
            for k in range(n):
                r = Signal(Value.cast(value).shape(), name=f"{name}_{k}")
                with m.If(en):
                    m.d.sync += r.eq(value)
                value = r
            return value

        m.submodules.params = prm = RecordMemory(PARAM_BITS, self.cfg.max_rows)
        m.d.comb += [prm.w_en.eq(self.w_en), prm.w_addr.eq(self.w_addr),
                     prm.w_data.eq(self.w_data), prm.r_en.eq(en), prm.r_addr[0].eq(self.row)]
        # the read (nothing follows a block-RAM output in the same cycle)
        rd = RecordMemory.LATENCY
        acc = delay(self.acc, rd, "acc")
        rec = ParamLayout(prm.r_data[0])
        # bias
        biased = Signal(signed(ACC_BITS + 1))
        with m.If(en):
            m.d.sync += biased.eq(acc + rec.bias)
        mult = delay(rec.mult, 1, "mult")
        # limb products
        nb = len(biased)
        prods = []
        for j, lo in enumerate(range(0, nb, LIMB)):
            limb = biased[lo:min(lo + LIMB, nb)]
            mul = RegisteredMult(len(limb) + (lo + LIMB < nb), MULT_BITS + 1)
            m.submodules[f"limbmult{j}"] = mul
            # lower limbs are unsigned: a zero sign bit above them; the top one is signed
            m.d.comb += [mul.en.eq(en), mul.a.eq(limb if lo + LIMB < nb else limb.as_signed()),
                         mul.b.eq(mult)]
            prods.append(mul.p)
        assert len(prods) == 3, "two partial-sum stages are counted in LATENCY"
        # the weighted sum of the limb products, one add per stage
        scaled = prods[0]
        for j, p in enumerate(prods[1:], 1):
            p = delay(p, j - 1, f"limbprod{j}")    # waits for the j-1 adds before it
            s = Signal(signed(self.scaled_bits), name=f"scaled{j}")
            with m.If(en):
                m.d.sync += s.eq(scaled + (p << (LIMB * j)))
            scaled = s
        # round half up: 2^(shift-1), decoded a stage ahead of its add; shift may
        # exceed the product's width: the result is then 0 or -1, as exact integer
        # arithmetic gives (the constant is 64 bits wide for that)
        to_round = 1 + RegisteredMult.LATENCY + 2       # bias, products, sums
        sh = delay(rec.shift, to_round - 1, "sh")
        half = delay((Const(1, ROUND_BITS) << (sh - 1)[:len(sh)])[:ROUND_BITS], 1, "half")
        shift = delay(sh, 2, "shr")
        shift_lo = delay(shift[:3], 1, "shr_lo")
        rounded = Signal(signed(self.scaled_bits + 1 + 8))
        with m.If(en):
            m.d.sync += rounded.eq(scaled + half)
        # shift: by whole bytes, then by the rest (arithmetic, as >> on a signed value)
        coarse = Signal.like(rounded)
        with m.If(en):
            m.d.sync += coarse.eq(rounded >> Cat(Const(0, 3), shift[3:]))
        tag = delay(Cat(self.valid, self.lastrow), self.LATENCY - 1, "tag")
        with m.If(en):
            m.d.sync += [self.o_value.eq(coarse >> shift_lo), self.o_valid.eq(tag[0]),
                         self.o_lastrow.eq(tag[1])]
        return m
