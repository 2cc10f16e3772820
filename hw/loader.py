"""Section loader: takes the layer stream through the gearbox, latches the
header, works out the layer's geometry, writes the codebook / params / acts
memories and issues one weight group per cycle to the decoders.

Two small state machines share the gearbox:
  * the input side (`InPhase`) accepts exactly the beats of the current layer,
    section by section, and says which section each accepted beat belongs to
    (the beat counters); it waits while the header is decoded and after the
    layer's last beat until the layer is done;
  * the consumer (`Phase`) takes records: the header, then each section's
    records, dropping a section's zero padding with its last record.
Cycle-exact behaviour is modelled in sim/golden.py:timing; docs/ARCH.md says it
in prose.
"""
from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.gearbox import Gearbox
from hw.records import HeaderLayout
from ssvq.config import ACT_BITS, CW_BITS, HEADER_BITS, PARAM_BITS, AccelConfig, Mode, log2


class InPhase(enum.Enum, shape=3):
    HEADER = 0
    WAIT = 1
    CODEBOOK = 2
    PARAMS = 3
    ACTS = 4
    WEIGHTS = 5
    DONE = 6


class Phase(enum.Enum, shape=3):
    IDLE = 0
    DECODE = 1
    CODEBOOK = 2
    PARAMS = 3
    ACTS = 4
    WEIGHTS = 5
    DRAIN = 6


def ceil_shift(value, k: int):
    """ceil(value / 2**k) for an unsigned value."""
    if k == 0:
        return value
    return (value >> k) + (value[:k] != 0)


class SectionLoader(wiring.Component):
    ISSUE_LATENCY = 1     # a group taken in cycle n is on `grp` in cycle n+1
    DECODE_CYCLES = 3     # geometry, rows*G, rows*G*group_bits

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        gmax = -(-cfg.max_cols // cfg.mults)
        self.gmax = gmax
        super().__init__({
            "i_stream": In(stream.Signature(cfg.bus)),
            "en": In(1),                 # pipeline enable (low: output back-pressure)
            "halt": In(1),               # error: accept no beat, do not leave DECODE
            "last_beat": Out(1),         # a beat accepted now is the layer's last
            "decoding": Out(1),          # the header is latched and being decoded
            "layer_done": In(1),         # the layer's last output beat is accepted
            "started": Out(1),           # the layer's first header beat is accepted
            "in_phase": Out(InPhase),    # section of a beat accepted this cycle
            "accept": Out(1),
            "hdr": Out(HeaderLayout),
            "groups": Out(range(gmax + 1)),
            # memory writes (data: the record at the bottom of the gearbox)
            "w_data": Out(cfg.max_record_bits),
            "cb_w_en": Out(cfg.m_max), "cb_w_addr": Out(range(cfg.kmax)),
            "prm_w_en": Out(1), "prm_w_addr": Out(range(cfg.max_rows)),
            "act_w_en": Out(1), "act_w_addr": Out(range(max(gmax, 2))),
            # issued weight group (stage 1 of the pipeline)
            "grp": Out(max(cfg.max_group_bits, 1)),
            "g_valid": Out(1), "g_first": Out(1), "g_last": Out(1),
            "g_row": Out(16), "g_q": Out(range(max(gmax, 2))), "g_lastrow": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        bus, lb = cfg.bus, log2(cfg.bus)
        m = Module()
        m.submodules.gearbox = gb = Gearbox(bus, cfg.max_record_bits)
        i_s, hdr = self.i_stream, self.hdr
        hb = -(-HEADER_BITS // bus)

        m.d.comb += [gb.i_valid.eq(i_s.valid), gb.i_data.eq(i_s.payload),
                     i_s.ready.eq(gb.i_ready), self.accept.eq(i_s.valid & gb.i_ready),
                     self.w_data.eq(gb.head)]

        # ---- layer geometry, worked out in the DECODE cycles from the header
        lm = log2(cfg.mults)
        is_int = hdr.mode == Mode.INT
        is_ssvq = hdr.mode == Mode.SSVQ
        cw_bits = Signal(range(cfg.d_max * CW_BITS + 1))
        grp_bits = Signal(range(cfg.max_group_bits + 1))
        cb_records = Signal(range(cfg.m_max * cfg.kmax + 1))
        cb_beats, prm_beats, act_beats = (Signal(32, name=n) for n in ("cb_beats", "prm_beats",
                                                                       "act_beats"))
        total_groups = Signal(32)
        wbits = Signal(48)
        w_beats = Signal(48)
        m.d.comb += w_beats.eq(ceil_shift(wbits, lb))
        groups = self.groups
        dcnt = Signal(range(self.DECODE_CYCLES))

        # ---- input side
        in_phase = Signal(InPhase)
        in_left = Signal(48, init=hb)
        phase = Signal(Phase)
        decode_done = Signal()
        m.d.comb += decode_done.eq((phase == Phase.DECODE) & (dcnt == self.DECODE_CYCLES - 1)
                                   & ~self.halt)
        m.d.comb += [self.in_phase.eq(in_phase),
                     gb.i_allow.eq((in_phase != InPhase.WAIT) & (in_phase != InPhase.DONE)
                                   & ~self.halt),
                     self.last_beat.eq((in_phase == InPhase.WEIGHTS) & (in_left == 1)),
                     self.decoding.eq(phase == Phase.DECODE),
                     self.started.eq(self.accept & (in_phase == InPhase.HEADER)
                                     & (in_left == hb))]
        accept = self.accept
        with m.If(accept):
            m.d.sync += in_left.eq(in_left - 1)
        with m.Switch(in_phase):
            with m.Case(InPhase.HEADER):
                with m.If(accept & (in_left == 1)):
                    m.d.sync += in_phase.eq(InPhase.WAIT)
            with m.Case(InPhase.WAIT):
                with m.If(decode_done):
                    with m.If(is_int):
                        m.d.sync += [in_phase.eq(InPhase.PARAMS), in_left.eq(prm_beats)]
                    with m.Else():
                        m.d.sync += [in_phase.eq(InPhase.CODEBOOK), in_left.eq(cb_beats)]
            for cur, nxt, n in ((InPhase.CODEBOOK, InPhase.PARAMS, prm_beats),
                                (InPhase.PARAMS, InPhase.ACTS, act_beats),
                                (InPhase.ACTS, InPhase.WEIGHTS, w_beats)):
                with m.Case(cur):
                    with m.If(accept & (in_left == 1)):
                        m.d.sync += [in_phase.eq(nxt), in_left.eq(n)]
            with m.Case(InPhase.WEIGHTS):
                with m.If(accept & (in_left == 1)):
                    m.d.sync += in_phase.eq(InPhase.DONE)
            with m.Case(InPhase.DONE):
                with m.If(self.layer_done):
                    m.d.sync += [in_phase.eq(InPhase.HEADER), in_left.eq(hb)]

        # ---- consumer: which record it wants, and taking it
        width = Signal(range(cfg.max_record_bits + 1))
        want = Signal()
        left = Signal(32)
        idx = Signal(32)
        bitpos = Signal(lb)
        with m.Switch(phase):
            with m.Case(Phase.IDLE):
                m.d.comb += [width.eq(HEADER_BITS), want.eq(1)]
            with m.Case(Phase.CODEBOOK):
                m.d.comb += [width.eq(cw_bits), want.eq(1)]
            with m.Case(Phase.PARAMS):
                m.d.comb += [width.eq(PARAM_BITS), want.eq(1)]
            with m.Case(Phase.ACTS):
                m.d.comb += [width.eq(cfg.mults * ACT_BITS), want.eq(1)]
            with m.Case(Phase.WEIGHTS):
                m.d.comb += [width.eq(grp_bits), want.eq(self.en)]
        take = Signal()
        last = Signal()
        nxt = Signal(lb)
        pad = Signal(lb)
        m.d.comb += [take.eq(want & (gb.level >= width)),
                     last.eq((phase == Phase.IDLE) | (left == 1)),
                     nxt.eq(bitpos + width), pad.eq(-nxt),
                     gb.consume.eq(Mux(take, width + Mux(last, pad, 0), 0))]
        with m.If(take):
            m.d.sync += [left.eq(left - 1), idx.eq(idx + 1), bitpos.eq(Mux(last, 0, nxt))]

        def start_section(ph, n):
            return [phase.eq(ph), left.eq(n), idx.eq(0)]

        code_bits = hdr.code_bits
        with m.Switch(phase):
            with m.Case(Phase.IDLE):
                with m.If(take):
                    m.d.sync += [hdr.eq(gb.head[:HEADER_BITS]), phase.eq(Phase.DECODE),
                                 dcnt.eq(0)]
            with m.Case(Phase.DECODE):
                with m.If(~self.halt):     # a bad header (the top's check) stops here
                    m.d.sync += dcnt.eq(dcnt + 1)
                    with m.Switch(dcnt):
                        with m.Case(0):
                            e = code_bits + hdr.log2_d + log2(CW_BITS) + (hdr.m == 2)
                            slots = ((hdr.code_bits + hdr.coef_bits)
                                     << (lm - hdr.log2_d + hdr.m - 1).as_unsigned()[:6])
                            m.d.sync += [
                                groups.eq(ceil_shift(hdr.cols, lm)),
                                cw_bits.eq(CW_BITS << hdr.log2_d),
                                cb_records.eq(Mux(is_int, 0, hdr.m << code_bits)),
                                cb_beats.eq(Mux(e >= lb, Const(1, 1) << (e - lb).as_unsigned()[:6], 1)),
                                prm_beats.eq(ceil_shift(hdr.rows << log2(PARAM_BITS), lb)),
                                grp_bits.eq(Mux(is_int, hdr.bits << lm,
                                                slots + Mux(is_ssvq, cfg.mults, 0))),
                            ]
                        with m.Case(1):
                            m.d.sync += [total_groups.eq(hdr.rows * groups),
                                         act_beats.eq(ceil_shift(groups << (lm + log2(ACT_BITS)),
                                                                 lb))]
                        with m.Default():
                            m.d.sync += wbits.eq(total_groups * grp_bits)
                            with m.If(is_int):
                                m.d.sync += start_section(Phase.PARAMS, hdr.rows)
                            with m.Else():
                                m.d.sync += start_section(Phase.CODEBOOK, cb_records)
            with m.Case(Phase.CODEBOOK):
                with m.If(take & last):
                    m.d.sync += start_section(Phase.PARAMS, hdr.rows)
            with m.Case(Phase.PARAMS):
                with m.If(take & last):
                    m.d.sync += start_section(Phase.ACTS, groups)
            with m.Case(Phase.ACTS):
                with m.If(take & last):
                    m.d.sync += start_section(Phase.WEIGHTS, total_groups)
            with m.Case(Phase.WEIGHTS):
                with m.If(take & last):
                    m.d.sync += phase.eq(Phase.DRAIN)
            with m.Case(Phase.DRAIN):
                with m.If(self.layer_done):
                    m.d.sync += phase.eq(Phase.IDLE)

        # ---- memory writes
        kmask = ((Const(1, 1) << code_bits) - 1).as_unsigned()[:len(self.cb_w_addr)]
        for i in range(cfg.m_max):
            m.d.comb += self.cb_w_en[i].eq(take & (phase == Phase.CODEBOOK)
                                           & ((idx >> code_bits) == i))
        m.d.comb += [self.cb_w_addr.eq(idx & kmask),
                     self.prm_w_en.eq(take & (phase == Phase.PARAMS)), self.prm_w_addr.eq(idx),
                     self.act_w_en.eq(take & (phase == Phase.ACTS)), self.act_w_addr.eq(idx)]

        # ---- weight groups: one per cycle into the pipeline's first register
        q = Signal(range(max(self.gmax, 2)))
        r = Signal(16)
        take_w = take & (phase == Phase.WEIGHTS)
        q_last = q == groups - 1
        with m.If(take_w):
            m.d.sync += [q.eq(Mux(q_last, 0, q + 1)), r.eq(r + q_last)]
        with m.If((phase == Phase.ACTS) & take & last):
            m.d.sync += [q.eq(0), r.eq(0)]
        with m.If(self.en):
            m.d.sync += [self.g_valid.eq(take_w), self.grp.eq(gb.head[:len(self.grp)]),
                         self.g_first.eq(q == 0), self.g_last.eq(q_last), self.g_row.eq(r),
                         self.g_q.eq(q), self.g_lastrow.eq(r == hdr.rows - 1)]
        return m
