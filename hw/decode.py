"""Weight decoders, one per mode family. Both take the issued group record
(stage 1) and deliver `mults` signed weights LATENCY = 7 cycles later, so the
MAC array sees one group per cycle whatever the mode.

IntDecode: element e of an int-b group is bits e*b .. e*b+b-1, two's complement
(b = 1: 0 is +1, 1 is -1).

CodebookDecode (vq, ssvq, additive): the record is [signs (ssvq: mults bits)]
then L*m slots s = l*m + i of (code, coefficient), F = code_bits + coef_bits bits
each. Lane l's vector is sum_i coef(l, i) * codebook_i[code(l, i)] (coefficient 1
without coefficient bits), negated per element where its sign bit is set.
  A1: slot fields picked at stride F            A2: codes to the codebook read ports
  R:  the memory's output register             S:  each element picks its lane's word
                                                    and element j; sign applied
  P1, P2: coefficient x codeword (shift-and-add, terms added in pairs, then the pairs)
  C:  sum over the m codewords
One register per stage: each stage is at most a few LUT levels or one carry
chain, for the ECP5 clock target (docs/ARCH.md, "Timing closure").
"""
from amaranth.hdl import Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.memories import RecordMemory
from ssvq.config import CW_BITS, AccelConfig, Mode, log2


class IntDecode(wiring.Component):
    LATENCY = 7      # as CodebookDecode: both feed the MAC array in the same cycle

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({"en": In(1), "grp": In(max(cfg.max_group_bits, 1)), "bits": In(8),
                          "w": Out(signed(cfg.weight_bits)).array(cfg.mults)})

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        bits = Signal(4)             # the layer's width, registered (stable for the layer)
        m.d.sync += bits.eq(self.bits)
        for e in range(cfg.mults):
            v = Signal(signed(8), name=f"int_w{e}")
            with m.Switch(bits):
                for b in cfg.int_bits:
                    with m.Case(b):
                        f = self.grp[e * b:(e + 1) * b]
                        m.d.comb += v.eq(Mux(f[0], -1, 1) if b == 1 else f.as_signed())
            stage = v
            for s in range(self.LATENCY):
                nxt = Signal(signed(8), name=f"int_w{e}_s{s}")
                with m.If(self.en):
                    m.d.sync += nxt.eq(stage)
                stage = nxt
            m.d.comb += self.w[e].eq(stage)
        return m


class CodebookDecode(wiring.Component):
    # A1 slot fields, A2 codes to the read ports (the memory's address register),
    # R read data registered, S select and sign, P1 P2 coefficient products, C sum
    LATENCY = 7

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        cb = cfg.d_max * CW_BITS
        super().__init__({
            "en": In(1), "grp": In(max(cfg.max_group_bits, 1)),
            "mode": In(8), "code_bits": In(8), "coef_bits": In(8), "log2_d": In(8), "m": In(8),
            # codebook writes from the loader
            "w_en": In(cfg.m_max), "w_addr": In(range(cfg.kmax)), "w_data": In(cb),
            "w": Out(signed(cfg.weight_bits)).array(cfg.mults),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        lanes, mm, mults = cfg.lanes_max, cfg.m_max, cfg.mults
        cmax, cbmax = cfg.code_bits_max, cfg.coef_bits_max
        en = self.en

        def reg(value, name, shape=None):
            r = Signal(shape if shape is not None else Value.cast(value).shape(), name=name)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

        def delay(value, n, name):
            for s in range(n):
                value = reg(value, f"{name}_d{s}")
            return value

        mems = []
        for i in range(mm):
            mem = RecordMemory(cfg.d_max * CW_BITS, cfg.kmax, read_ports=lanes)
            m.submodules[f"codebook{i}"] = mem
            m.d.comb += [mem.w_en.eq(self.w_en[i]), mem.w_addr.eq(self.w_addr),
                         mem.w_data.eq(self.w_data), mem.r_en.eq(en)]
            mems.append(mem)
        # the layer's decode controls, registered (the header is latched many cycles
        # before a layer's first group, and holds still until its last has gone through):
        # no compare or add of header fields is on a datapath path
        def const(value, name, shape):
            r = Signal(shape, name=name)
            m.d.sync += r.eq(value)
            return r

        fmax = cmax + cbmax
        is_ssvq = const(self.mode == Mode.SSVQ, "is_ssvq", 1)
        m2 = const(self.m == 2, "m2", 1)
        fwidth = const(self.code_bits + self.coef_bits, "fwidth", range(fmax + 1))
        code_mask = const((1 << self.code_bits) - 1, "code_mask", max(cmax, 1))
        code_bits = const(self.code_bits, "code_bits_r", range(max(cmax, 1) + 1))
        coef_bits = const(self.coef_bits, "coef_bits_r", range(max(cbmax, 1) + 1))   # >= 1 bit
        log2_d = const(self.log2_d, "log2_d_r", range(log2(cfg.d_max) + 1))
        grp = self.grp
        nslots = lanes * mm

        # A1: slot fields at stride F after the signs (a mux of one case per width)
        body = Signal(len(grp))
        m.d.comb += body.eq(Mux(is_ssvq, grp >> mults, grp))
        slots = []
        for s in range(nslots):
            f = Signal(fmax, name=f"slot{s}")
            with m.Switch(fwidth):
                for w in range(1, fmax + 1):
                    if (s + 1) * w <= len(body):
                        with m.Case(w):
                            m.d.comb += f.eq(body[s * w:(s + 1) * w])
            slots.append(reg(f, f"slot{s}_a1"))
        sign = delay(Mux(is_ssvq, grp[:mults], 0), 3, "sign")       # to S

        # A2: lane l's code i to codebook i's read port l; its coefficient
        cw_sh = signed(max(cbmax, 2))          # -2^(c-1) .. 2^(c-1)-1, and 1 (no coefficient)
        coef = [[None] * mm for _ in range(lanes)]
        for lane in range(lanes):
            for i in range(mm):
                # m = 1: slot l is lane l; m = 2: slot 2l + i
                f1 = slots[lane] if i == 0 else 0
                f2 = slots[2 * lane + i] if mm == 2 else 0
                f = Signal(fmax, name=f"field{lane}_{i}")
                m.d.comb += f.eq(Mux(m2, f2, f1))
                m.d.comb += mems[i].r_addr[lane].eq(f & code_mask)
                # the coefficient is not needed before S: shifted out of its field here
                # (by code_bits) and sign-extended (by coef_bits) a stage later, one
                # variable step a stage
                raw = reg((f >> code_bits)[:max(cbmax, 1)], f"rawcoef{lane}_{i}_a2",
                          max(cbmax, 1))
                cv = Signal(cw_sh, name=f"cv{lane}_{i}")
                with m.Switch(coef_bits):
                    with m.Case(0):
                        m.d.comb += cv.eq(Mux((i == 0) | m2, 1, 0))
                    for cbits in range(1, cbmax + 1):
                        with m.Case(cbits):
                            m.d.comb += cv.eq(Mux((i == 0) | m2, raw[:cbits].as_signed(), 0))
                coef[lane][i] = delay(cv, 1, f"coef{lane}_{i}")     # to S

        # R: the memory's output register (RecordMemory.LATENCY = 2: nothing follows an
        # unregistered block-RAM output, the slowest path on an ECP5: docs/ARCH.md)
        assert RecordMemory.LATENCY == 2
        rd = [[mems[i].r_data[lane] for i in range(mm)] for lane in range(lanes)]

        # S: each element picks its lane's codeword element, as a signed value, and its
        # coefficient with the weight's sign applied (-(c*x) = (-c)*x: the negation is of
        # a few-bit register value, not on the path from the block RAM's output)
        wb = cfg.weight_bits
        prod = [[None] * mm for _ in range(mults)]
        for e in range(mults):
            for i in range(mm):
                cw = Signal(8, name=f"cwsel{e}_{i}")
                ce = Signal(cw_sh, name=f"cesel{e}_{i}")
                with m.Switch(log2_d):
                    for d in cfg.d_set:
                        lane, j = e // d, e % d
                        if lane < lanes:
                            with m.Case(log2(d)):
                                m.d.comb += [cw.eq(rd[lane][i].word_select(j, CW_BITS)),
                                             ce.eq(coef[lane][i])]
                # codebook i >= m is never written in this layer: its (undefined) read
                # data must not reach the product, even times a zero coefficient
                used = 1 if i == 0 else m2
                v = Signal(signed(9), name=f"cwv{e}_{i}")
                m.d.comb += v.eq(Mux(used, Mux(is_ssvq, cw, cw.as_signed()), 0))
                x = reg(v, f"cw{e}_{i}_s")
                # P: coefficient x codeword as shift-and-add in LUTs: a hard multiplier
                # each would need 64 MULT18X18D at the default build, more than an
                # LFE5U-45F has beside the MAC array's 32
                # (two stages: P1 adds the terms in pairs, P2 the pairs; the codeword's
                # register fans out to every term, so one stage of it all was the
                # decode's slowest path, 126.6 MHz alone)
                if cbmax == 0:
                    # no coefficients: the sign is the only factor, applied in P1
                    neg = reg(sign[e], f"neg{e}_{i}_s")
                    p = reg(Mux(neg, -x, x), f"cp{e}_{i}_p1", signed(wb))
                else:
                    c = reg(Mux(sign[e], -ce, ce), f"ce{e}_{i}_s", signed(len(ce) + 1))
                    n = len(c)
                    terms = [Mux(c[k], x << k, 0) for k in range(n - 1)]
                    terms.append(-Mux(c[n - 1], x << (n - 1), 0))
                    pairs = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                             for k in range(0, len(terms), 2)]
                    p = _tree([reg(v, f"cp{e}_{i}_p1_{k}", signed(wb))
                               for k, v in enumerate(pairs)])
                prod[e][i] = reg(p, f"cp{e}_{i}", signed(wb))

        # C: sum over the m codewords
        for e in range(mults):
            self_w = reg(_tree(prod[e]), f"cb_w{e}", signed(wb))
            m.d.comb += self.w[e].eq(self_w)
        return m


def _tree(values):
    while len(values) > 1:
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]
