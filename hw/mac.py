"""MAC array: `mults` multipliers, a pipelined adder tree and the row
accumulator. Emits each row's dot product when its last group has gone through."""
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.prims import RegisteredMult
from ssvq.config import ACC_BITS, ACT_BITS, AccelConfig

TREE_STAGES = 5     # registered stages of the adder tree (one adder level each up to 32 mults)


def tree_levels(values, levels):
    """`levels` levels of pairwise addition (an odd one out passes through)."""
    for _ in range(levels):
        if len(values) == 1:
            break
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values


class MacArray(wiring.Component):
    LATENCY = RegisteredMult.LATENCY + TREE_STAGES + 1    # products, tree, accumulate

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
        tag = (self.valid, self.first, self.last, self.row, self.lastrow)

        def delay(sigs, name):
            out = [Signal.like(s, name=f"{name}_{i}") for i, s in enumerate(sigs)]
            with m.If(en):
                m.d.sync += [o.eq(s) for o, s in zip(out, sigs)]
            return out

        # products: hard multipliers with input and output registers (hw.prims)
        prods = []
        for e in range(cfg.mults):
            mul = RegisteredMult(cfg.weight_bits, ACT_BITS)
            m.submodules[f"mult{e}"] = mul
            m.d.comb += [mul.en.eq(en), mul.a.eq(self.w[e]), mul.b.eq(self.a[e])]
            prods.append(mul.p)
        # the tree: a register after every ceil(log2(mults) / TREE_STAGES) levels (one
        # level is a carry chain of about 20 bits; two in a cycle made 120 MHz on an ECP5)
        t = tag
        for k in range(RegisteredMult.LATENCY):
            t = delay(t, f"tm{k}")
        total = (cfg.mults - 1).bit_length()
        per = -(-total // TREE_STAGES)
        sums = prods
        for st in range(TREE_STAGES):
            nxt = []
            for j, v in enumerate(tree_levels(sums, per)):
                r = Signal(signed(min(ACC_BITS, len(v))), name=f"tree{st}_{j}")
                with m.If(en):
                    m.d.sync += r.eq(v)
                nxt.append(r)
            sums = nxt
            t = delay(t, f"tt{st}")
        assert len(sums) == 1
        psum = sums[0]
        valid, first, last, row, lastrow = t
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
