"""MAC array: `mults` multipliers, a two-stage adder tree and the row
accumulator. Emits each row's dot product when its last group has gone through."""
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ssvq.config import ACC_BITS, ACT_BITS, AccelConfig

TREE_CHUNK = 8      # products per first-stage adder (one 32-input tree was too slow)


def tree_sum(values):
    while len(values) > 1:
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


class MacArray(wiring.Component):
    LATENCY = 4      # products, partial sums, group sum, accumulate

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "en": In(1),
            "w": In(signed(cfg.weight_bits)).array(cfg.mults),
            "a": In(signed(ACT_BITS)).array(cfg.mults),
            "valid": In(1), "first": In(1), "last": In(1), "row": In(16), "lastrow": In(1),
            "o_valid": Out(1), "o_acc": Out(signed(ACC_BITS)), "o_row": Out(16),
            "o_lastrow": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        en = self.en
        pw = cfg.weight_bits + ACT_BITS
        tag = (self.valid, self.first, self.last, self.row, self.lastrow)

        def delay(sigs, name):
            out = [Signal.like(s, name=f"{name}_{i}") for i, s in enumerate(sigs)]
            with m.If(en):
                m.d.sync += [o.eq(s) for o, s in zip(out, sigs)]
            return out

        prods = []
        for e in range(cfg.mults):
            p = Signal(signed(pw), name=f"prod{e}")
            with m.If(en):
                m.d.sync += p.eq(self.w[e] * self.a[e])
            prods.append(p)
        t1 = delay(tag, "t1")
        partial = []
        for i in range(0, cfg.mults, TREE_CHUNK):
            chunk = prods[i:i + TREE_CHUNK]
            ps = Signal(signed(pw + (len(chunk) - 1).bit_length()), name=f"partial{i // TREE_CHUNK}")
            with m.If(en):
                m.d.sync += ps.eq(tree_sum(chunk))
            partial.append(ps)
        t2 = delay(t1, "t2")
        psum = Signal(signed(ACC_BITS))
        with m.If(en):
            m.d.sync += psum.eq(tree_sum(partial))
        valid, first, last, row, lastrow = delay(t2, "t3")
        acc = Signal(signed(ACC_BITS))
        acc_next = Signal(signed(ACC_BITS))
        m.d.comb += acc_next.eq(Mux(first, psum, acc + psum))
        with m.If(en):
            m.d.sync += [self.o_valid.eq(valid & last), self.o_row.eq(row),
                         self.o_lastrow.eq(lastrow)]
            with m.If(valid):
                m.d.sync += acc.eq(acc_next)
            with m.If(valid & last):
                m.d.sync += self.o_acc.eq(acc_next)
        return m
