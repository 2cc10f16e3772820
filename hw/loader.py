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
from amaranth.hdl import Const, Module, Mux, Signal, Value
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
    ISSUE_LATENCY = 1 + Gearbox.LATENCY    # a group taken in cycle n is on `grp` in n+4
    # DECODE: the header reaches `head` (Gearbox.LATENCY), is latched (1), and the
    # geometry pipeline below works out the layer's numbers (GEOMETRY_STAGES); the
    # last cycle hands over to the first load section.
    GEOMETRY_STAGES = 8
    DECODE_CYCLES = Gearbox.LATENCY + 1 + GEOMETRY_STAGES

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
        bus = cfg.bus
        m = Module()
        m.submodules.gearbox = gb = Gearbox(bus, cfg.max_record_bits)
        i_s, hdr = self.i_stream, self.hdr
        hb = -(-HEADER_BITS // bus)
        en = self.en

        m.d.comb += [gb.i_valid.eq(i_s.valid), gb.i_data.eq(i_s.payload), gb.en.eq(en),
                     i_s.ready.eq(gb.i_ready), self.accept.eq(i_s.valid & gb.i_ready)]

        # ---- layer geometry: a pipeline of registers from the latched header, settled
        # GEOMETRY_STAGES cycles after it (the header does not change during DECODE)
        geo = self._geometry(m, hdr)
        groups, cw_bits, cb_records = self.groups, geo["cw_bits"], geo["cb_records"]
        cb_beats, prm_beats, act_beats = geo["cb_beats"], geo["prm_beats"], geo["act_beats"]
        grp_bits, total_groups, w_beats = geo["grp_bits"], geo["total_groups"], geo["w_beats"]
        is_int = geo["is_int"]
        dcnt = Signal(range(self.DECODE_CYCLES))

        # counters of beats and records: wide enough for the largest section a header
        # the build accepts can describe (hw.accel's cause check refuses the rest)
        count = range(max(hb, cfg.m_max * cfg.kmax * cfg.d_max * CW_BITS // bus + 1,
                          cfg.max_rows * PARAM_BITS // bus + 1, self.gmax * cfg.mults,
                          cfg.max_rows * self.gmax * cfg.max_group_bits // bus + 1,
                          cfg.max_rows * self.gmax, cfg.m_max * cfg.kmax) + 1)

        # ---- input side. Counters count down; "one" flags say a counter is at 1 (the
        # next accepted beat is the section's last) so no wide compare is on a path.
        in_phase = Signal(InPhase)
        in_left = Signal(count, init=hb)
        in_one = Signal(init=hb == 1)
        in_first = Signal(init=1)                 # no header beat accepted yet
        phase = Signal(Phase)
        decode_done = Signal()
        m.d.comb += decode_done.eq((phase == Phase.DECODE) & (dcnt == self.DECODE_CYCLES - 1)
                                   & ~self.halt)
        # in_allow: in_phase is not WAIT or DONE, a register set with in_phase, so the
        # input's ready is one gate of three flip-flops (allow, halt, the gearbox's room)
        in_allow = Signal(init=1)
        m.d.comb += [self.in_phase.eq(in_phase),
                     gb.i_allow.eq(in_allow & ~self.halt),
                     self.last_beat.eq((in_phase == InPhase.WEIGHTS) & in_one),
                     # the cause check (hw.top) reads the header once it is latched
                     self.decoding.eq((phase == Phase.DECODE) & (dcnt >= Gearbox.LATENCY)),
                     self.started.eq(self.accept & (in_phase == InPhase.HEADER) & in_first)]
        accept = self.accept

        # As on the consumer side, the next section's beat count and one-flag wait in
        # registers, so a section's last beat only copies them.
        in_beats = {InPhase.CODEBOOK: cb_beats, InPhase.PARAMS: prm_beats,
                    InPhase.ACTS: act_beats, InPhase.WEIGHTS: w_beats}
        in_beats_one = {ph: Signal(name=f"in_one_{ph.name.lower()}") for ph in in_beats}
        m.d.sync += [in_beats_one[ph].eq(n == 1) for ph, n in in_beats.items()]
        in_after = {InPhase.CODEBOOK: InPhase.PARAMS, InPhase.PARAMS: InPhase.ACTS,
                    InPhase.ACTS: InPhase.WEIGHTS, InPhase.WEIGHTS: InPhase.DONE}
        in_nxt_phase = Signal(InPhase)
        in_nxt_left = Signal(count)
        in_nxt_one = Signal()
        in_loading = Signal()                  # in_phase is CODEBOOK .. WEIGHTS

        def in_go(ph):
            return [in_phase.eq(ph), in_allow.eq(ph not in (InPhase.WAIT, InPhase.DONE))]

        def in_next(ph):
            if ph == InPhase.DONE:
                return [in_nxt_phase.eq(InPhase.DONE)]
            return [in_nxt_phase.eq(ph), in_nxt_left.eq(in_beats[ph]),
                    in_nxt_one.eq(in_beats_one[ph])]

        def in_start(ph):
            return [*in_go(ph), in_loading.eq(1), in_left.eq(in_beats[ph]),
                    in_one.eq(in_beats_one[ph]), *in_next(in_after[ph])]

        with m.If(accept):
            m.d.sync += [in_left.eq(in_left - 1), in_one.eq(in_left == 2), in_first.eq(0)]
        with m.If(accept & in_one & in_loading):
            m.d.sync += [in_phase.eq(in_nxt_phase), in_allow.eq(in_nxt_phase != InPhase.DONE),
                         in_loading.eq(in_nxt_phase != InPhase.DONE),
                         in_left.eq(in_nxt_left), in_one.eq(in_nxt_one)]
            with m.Switch(in_nxt_phase):
                for cur in (InPhase.PARAMS, InPhase.ACTS, InPhase.WEIGHTS):
                    with m.Case(cur):
                        m.d.sync += in_next(in_after[cur])
        with m.Switch(in_phase):
            with m.Case(InPhase.HEADER):
                with m.If(accept & in_one):
                    m.d.sync += in_go(InPhase.WAIT)
            with m.Case(InPhase.WAIT):
                with m.If(decode_done):
                    with m.If(is_int):
                        m.d.sync += in_start(InPhase.PARAMS)
                    with m.Else():
                        m.d.sync += in_start(InPhase.CODEBOOK)
            with m.Case(InPhase.DONE):
                with m.If(self.layer_done):
                    m.d.sync += [*in_go(InPhase.HEADER), in_left.eq(hb), in_one.eq(hb == 1),
                                 in_first.eq(1)]

        # ---- consumer: which record it wants, and taking it. A section's records all
        # have one width, and a section starts on a beat boundary, so the padding after
        # its last record is a number of the section: each section's width and "width
        # plus padding" are loaded into two registers when it starts, and a take drops
        # one of them (no addition on the path from `level` back to `level`).
        rec_bits = range(cfg.max_record_bits + bus + 1)
        hdr_last = hb * bus                              # the header and its padding
        width = Signal(rec_bits, init=HEADER_BITS)
        width_last = Signal(rec_bits, init=hdr_last)
        # what the gearbox's registered `fits` needs (hw/gearbox.py) after a section's
        # last take: width_last + the next section's width, loaded with width_last (a
        # register, so the sum is off the path; 2 x width for any other take is wiring)
        need_bits = range(2 * (cfg.max_record_bits + bus) + 1)
        need_last = Signal(need_bits)
        want = Signal()
        left = Signal(count)
        left_one = Signal()
        idx = Signal(count)
        with m.Switch(phase):
            with m.Case(Phase.IDLE, Phase.CODEBOOK, Phase.PARAMS, Phase.ACTS):
                m.d.comb += want.eq(1)
            with m.Case(Phase.WEIGHTS):
                m.d.comb += want.eq(en)
        take = Signal()
        last = Signal()
        m.d.comb += [take.eq(want & gb.fits),
                     last.eq((phase == Phase.IDLE) | left_one),
                     gb.take.eq(take), gb.last.eq(last), gb.rec_width.eq(width),
                     gb.rec_width_last.eq(width_last), gb.need_take.eq(width << 1),
                     gb.need_last.eq(need_last)]
        with m.If(take):
            m.d.sync += [left.eq(left - 1), left_one.eq(left == 2), idx.eq(idx + 1)]
        section_width = {Phase.CODEBOOK: (cw_bits, geo["cw_last"]),
                         Phase.PARAMS: (PARAM_BITS, geo["prm_last"]),
                         Phase.ACTS: (cfg.mults * ACT_BITS, geo["act_last"]),
                         Phase.WEIGHTS: (grp_bits, geo["grp_last"])}
        section_count = {Phase.CODEBOOK: cb_records, Phase.PARAMS: hdr.rows,
                         Phase.ACTS: groups, Phase.WEIGHTS: total_groups}
        # "the section has one record", registered like the rest of the geometry
        section_one = {ph: Signal(name=f"one_{ph.name.lower()}") for ph in section_count}
        m.d.sync += [section_one[ph].eq(n == 1) for ph, n in section_count.items()]
        # The section after the current one is held ready in registers (loaded when the
        # current one starts), so a section's last take only copies them: the take feeds
        # a two-way choice per register, not a choice by phase of the geometry values.
        nxt_phase = Signal(Phase)
        nxt_left = Signal(count)
        nxt_one = Signal()
        nxt_w = Signal(rec_bits)
        nxt_wl = Signal(rec_bits)
        nxt_need_last = Signal(need_bits)
        loading = Signal()                  # phase is CODEBOOK, PARAMS, ACTS or WEIGHTS

        after = {Phase.CODEBOOK: Phase.PARAMS, Phase.PARAMS: Phase.ACTS,
                 Phase.ACTS: Phase.WEIGHTS, Phase.WEIGHTS: Phase.DRAIN}

        def need_after_last(ph):
            # the bits a section's last take must leave for the next section's first
            # record (after the weights: none, DRAIN takes nothing)
            nxt = after[ph]
            return section_width[ph][1] + (section_width[nxt][0] if nxt != Phase.DRAIN else 0)

        def load_next(ph):
            if ph == Phase.DRAIN:
                return [nxt_phase.eq(Phase.DRAIN)]
            w, wl = section_width[ph]
            return [nxt_phase.eq(ph), nxt_left.eq(section_count[ph]),
                    nxt_one.eq(section_one[ph]), nxt_w.eq(w), nxt_wl.eq(wl),
                    nxt_need_last.eq(need_after_last(ph))]

        def start_section(ph):
            w, wl = section_width[ph]
            return [phase.eq(ph), loading.eq(1), left.eq(section_count[ph]),
                    left_one.eq(section_one[ph]), idx.eq(0), width.eq(w), width_last.eq(wl),
                    need_last.eq(need_after_last(ph)),
                    *load_next(after[ph])]

        with m.If(take & last & loading):
            m.d.sync += [phase.eq(nxt_phase), loading.eq(nxt_phase != Phase.DRAIN),
                         left.eq(nxt_left), left_one.eq(nxt_one), idx.eq(0),
                         width.eq(nxt_w), width_last.eq(nxt_wl),
                         need_last.eq(nxt_need_last)]
            with m.Switch(nxt_phase):
                for cur in (Phase.PARAMS, Phase.ACTS, Phase.WEIGHTS):
                    with m.Case(cur):
                        m.d.sync += load_next(after[cur])
        with m.Switch(phase):
            with m.Case(Phase.IDLE):
                with m.If(take):
                    m.d.sync += [phase.eq(Phase.DECODE), dcnt.eq(0)]
            with m.Case(Phase.DECODE):
                with m.If(~self.halt):     # a bad header (the top's check) stops here
                    m.d.sync += dcnt.eq(dcnt + 1)
                    with m.If(dcnt == Gearbox.LATENCY - 1):   # the header is on `head`
                        m.d.sync += hdr.eq(gb.head[:HEADER_BITS])
                    with m.If(dcnt == self.DECODE_CYCLES - 1):
                        with m.If(is_int):
                            m.d.sync += start_section(Phase.PARAMS)
                        with m.Else():
                            m.d.sync += start_section(Phase.CODEBOOK)
            with m.Case(Phase.DRAIN):
                with m.If(self.layer_done):
                    m.d.sync += [phase.eq(Phase.IDLE), width.eq(HEADER_BITS),
                                 width_last.eq(hdr_last)]
        # the width of the record wanted next cycle when nothing is taken now: this one,
        # or (`new`) the first section's at the end of DECODE, the header's when a layer
        # ends; `need_new` a register (the geometry's first width is settled cycles before
        # DECODE ends), `new` only the last choice in front of the gearbox's fits register
        need_new = Signal(rec_bits, init=HEADER_BITS)
        m.d.sync += need_new.eq(Mux(phase == Phase.DECODE, Mux(is_int, PARAM_BITS, cw_bits),
                                    HEADER_BITS))
        m.d.comb += [gb.need_stay.eq(width), gb.need_new.eq(need_new),
                     gb.new.eq(decode_done | ((phase == Phase.DRAIN) & self.layer_done))]

        # ---- what each take was, carried beside the record to `head` (clocked by en,
        # like the gearbox's read stages; loads happen while no output waits, en high)
        q = Signal(range(max(self.gmax, 2)))
        r = Signal(16)
        q_last = Signal()
        m.d.comb += q_last.eq(q == geo["groups_m1"])
        tag = {"cb": take & (phase == Phase.CODEBOOK), "prm": take & (phase == Phase.PARAMS),
               "act": take & (phase == Phase.ACTS), "w": take & (phase == Phase.WEIGHTS),
               "idx": idx, "first": q == 0, "last": q_last, "row": r, "q": q,
               "lastrow": r == geo["rows_m1"]}
        for s in range(Gearbox.LATENCY):
            nxt_tag = {k: Signal(len(Value.cast(v)), name=f"rec{s}_{k}") for k, v in tag.items()}
            with m.If(en):
                m.d.sync += [nxt_tag[k].eq(v) for k, v in tag.items()]
            tag = nxt_tag
        with m.If(take & (phase == Phase.WEIGHTS)):
            m.d.sync += [q.eq(Mux(q_last, 0, q + 1)), r.eq(r + q_last)]
        with m.If((phase == Phase.ACTS) & take & last):
            m.d.sync += [q.eq(0), r.eq(0)]

        # ---- memory writes, from the record on `head`, through one register: the block
        # RAMs sit across the die, so nothing but a route is between a flip-flop and their
        # write pins (a write lands a cycle later; the first read of anything written is
        # at least two cycles after the section's last write: docs/ARCH.md)
        code_bits = hdr.code_bits
        kmask = Signal(len(self.cb_w_addr))          # the layer's, set during DECODE
        m.d.sync += kmask.eq(((Const(1, 1) << code_bits) - 1).as_unsigned()[:len(kmask)])
        # codeword idx goes to codebook idx >> code_bits: compared with i << code_bits,
        # layer registers like kmask (the variable shift of idx in front of the write
        # enables was the whole design's worst path once the reset was one register)
        idx_w = len(tag["idx"])
        hmask = Signal(idx_w)                        # ~((1 << code_bits) - 1)
        m.d.sync += hmask.eq(~((Const(1, 1) << code_bits) - 1).as_unsigned()[:idx_w])
        for i in range(cfg.m_max):
            pat = Signal(idx_w, name=f"cb_sel{i}")
            m.d.sync += [pat.eq((Const(i, max(i.bit_length(), 1)) << code_bits)[:idx_w]),
                         self.cb_w_en[i].eq(tag["cb"] & ((tag["idx"] & hmask) == pat))]
        m.d.sync += [self.cb_w_addr.eq(tag["idx"] & kmask), self.w_data.eq(gb.head),
                     self.prm_w_en.eq(tag["prm"]), self.prm_w_addr.eq(tag["idx"]),
                     self.act_w_en.eq(tag["act"]), self.act_w_addr.eq(tag["idx"])]

        # ---- weight groups: one per cycle into the pipeline's first register
        with m.If(en):
            m.d.sync += [self.g_valid.eq(tag["w"]), self.grp.eq(gb.head[:len(self.grp)]),
                         self.g_first.eq(tag["first"]), self.g_last.eq(tag["last"]),
                         self.g_row.eq(tag["row"]), self.g_q.eq(tag["q"]),
                         self.g_lastrow.eq(tag["lastrow"])]
        return m

    def _geometry(self, m, hdr) -> dict:
        """The layer's numbers from its header, one register stage per step (always
        clocked: the header holds still during DECODE). Step k's values are valid k
        cycles after the header is latched; all are by GEOMETRY_STAGES."""
        cfg = self.cfg
        lb, lm = log2(cfg.bus), log2(cfg.mults)

        def reg(value, name, width):
            r = Signal(width, name=name)
            m.d.sync += r.eq(value)
            return r

        # 1: sums and simple shifts; the mode tests (an 8-bit compare each) registered
        is_int = reg(hdr.mode == Mode.INT, "is_int", 1)
        is_ssvq = reg(hdr.mode == Mode.SSVQ, "is_ssvq", 1)
        groups = self.groups
        m.d.sync += groups.eq(ceil_shift(hdr.cols, lm))
        cw_bits = reg(CW_BITS << hdr.log2_d, "cw_bits", range(cfg.d_max * CW_BITS + 1))
        m_codes = reg(hdr.m << hdr.code_bits, "m_codes", range(cfg.m_max * cfg.kmax + 1))
        e = reg(hdr.code_bits + hdr.log2_d + log2(CW_BITS) + (hdr.m == 2), "cb_e", 8)
        prm_beats = reg(ceil_shift(hdr.rows << log2(PARAM_BITS), lb), "prm_beats", 32)
        fwidth = reg(hdr.code_bits + hdr.coef_bits, "fwidth", 8)
        fshift = reg((lm - hdr.log2_d + hdr.m - 1).as_unsigned()[:6], "fshift", 6)
        int_bits = reg(hdr.bits << lm, "int_grp_bits", range(cfg.max_group_bits + 1))
        # the last row's index (1) and the last group's in a row (2): the issue's
        # compares then have no subtraction in front of them
        rows_m1 = reg(hdr.rows - 1, "rows_m1", 16)
        # 2: codebook records and beats, slot bits, acts beats
        cb_records = reg(Mux(is_int, 0, m_codes), "cb_records", len(m_codes))
        groups_m1 = reg(groups - 1, "groups_m1", len(groups))
        cb_beats = reg(Mux(e >= lb, Const(1, 1) << (e - lb).as_unsigned()[:6], 1), "cb_beats", 32)
        slots = reg(fwidth << fshift, "slot_bits", range(cfg.max_group_bits + 1))
        act_beats = reg(ceil_shift(groups << (lm + log2(ACT_BITS)), lb), "act_beats", 32)
        # 3: group bits
        grp_bits = reg(Mux(is_int, int_bits, slots + Mux(is_ssvq, cfg.mults, 0)), "grp_bits",
                       range(cfg.max_group_bits + 1))
        # 2..3: rows x G; 4..5: G x group bits; 6..7: rows x (G x group bits)
        total_groups = _mult(m, hdr.rows, groups, "total_groups", 32)
        row_bits = _mult(m, groups, grp_bits, "row_bits",
                         range(self.gmax * cfg.max_group_bits + 1))
        wbits = _mult(m, hdr.rows, row_bits, "wbits", 48)
        # 8: weight beats
        w_beats = reg(ceil_shift(wbits, lb), "w_beats", 32)
        # each section's last record with the padding to the next beat boundary:
        # width + ((-section bits) mod bus)
        rb = range(cfg.max_record_bits + cfg.bus + 1)

        # (only the section's low lb bits matter: the padding is worked out on them alone)
        # (2**lb - low, not -low: a section size narrower than lb bits, e.g. the acts'
        # `groups << 3` at max_cols = 1, made -low too narrow and the padding wrong)
        def last(w, section_bits, name):
            low = Value.cast(section_bits)[:lb]
            return reg(w + (Const(1 << lb, lb + 1) - low)[:lb], name, rb)
        # 4 (codebook: m << code_bits records of 8 << log2_d bits; the variable shift of
        # the section's low bits a stage of its own), 1 (params: 64-bit records), 2 (acts:
        # G records of mults x 8 bits), 8 (weights: wbits)
        cb_low = reg((cb_records[:lb] << (hdr.log2_d + log2(CW_BITS))[:5])[:lb], "cb_low", lb)
        cw_last = last(cw_bits, cb_low, "cw_last")
        prm_last = last(PARAM_BITS, hdr.rows << log2(PARAM_BITS), "prm_last")
        act_last = last(cfg.mults * ACT_BITS, groups << (lm + log2(ACT_BITS)), "act_last")
        grp_last = last(grp_bits, wbits, "grp_last")
        return {"is_int": is_int, "rows_m1": rows_m1, "groups_m1": groups_m1,
                "cw_bits": cw_bits, "cb_records": cb_records, "cb_beats": cb_beats,
                "prm_beats": prm_beats, "act_beats": act_beats, "grp_bits": grp_bits,
                "total_groups": total_groups, "w_beats": w_beats, "cw_last": cw_last,
                "prm_last": prm_last, "act_last": act_last, "grp_last": grp_last}


def _mult(m, a, b, name, width):
    """a * b (unsigned), valid two cycles after a and b: a registered hard multiplier
    when both fit one (17 bits), else the same two registers around a fabric one."""
    from hw.prims import RegisteredMult
    out = Signal(width, name=name)
    if len(a) <= 17 and len(b) <= 17:
        mul = RegisteredMult(len(a) + 1, len(b) + 1)
        m.submodules[f"{name}_mult"] = mul
        m.d.comb += [mul.en.eq(1), mul.a.eq(a), mul.b.eq(b), out.eq(mul.p)]
    else:
        ar, br = Signal.like(a, name=f"{name}_a"), Signal.like(b, name=f"{name}_b")
        m.d.sync += [ar.eq(a), br.eq(b), out.eq(ar * br)]
    return out
