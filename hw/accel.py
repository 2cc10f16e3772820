"""Decode-and-MAC accelerator: one layer image in, int8 outputs out.

The same L-lane x D-multiplier array serves int8, VQ and SSVQ layers: only the
decode in front of the multipliers differs, so int8 is a fair baseline on the
same bus. docs/ARCH.md has the ports and timing; docs/FORMAT.md the stream.
"""
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.beat_memory import BeatMemory
from hw.config import (ACC_BITS, COUNTERS, MODE_ID, MODES, MULT_BITS, OUT_BITS, RECORD_BITS,
                       SHIFT_BITS, AccelConfig)

COUNTER_BITS = 32


class Phase(enum.Enum, shape=3):
    IDLE = 0
    CODEBOOK = 1
    PARAMS = 2
    ACTS = 3
    WEIGHTS = 4


def _log2(x: int) -> int:
    return x.bit_length() - 1


class Accelerator(wiring.Component):
    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        ports = {
            "i_stream": In(stream.Signature(cfg.bus)),
            "o_stream": Out(stream.Signature(cfg.bus)),
            "busy": Out(1),
        }
        ports.update({f"cnt_{c}": Out(COUNTER_BITS) for c in COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        bus, lanes, d = cfg.bus, cfg.lanes, cfg.d
        geo = {name: cfg.mode(name) for name in MODES}
        max_groups = cfg.groups_per_row(cfg.max_cols)

        m.submodules.codebook = cbm = BeatMemory(
            record_bits=cfg.codeword_bits, depth=cfg.k, bus=bus, read_ports=lanes)
        m.submodules.params = prm = BeatMemory(
            record_bits=RECORD_BITS, depth=cfg.max_rows, bus=bus)
        m.submodules.acts = actm = BeatMemory(
            record_bits=cfg.act_word_bits, depth=max_groups, bus=bus)

        i_s, o_s = self.i_stream, self.o_stream
        accept = Signal()
        m.d.comb += accept.eq(i_s.valid & i_s.ready)

        # ---- layer registers (latched from the header) ----
        phase = Signal(Phase)
        mode = Signal(2)
        rows = Signal(16)
        groups = Signal(range(max_groups + 1))        # groups per row
        total_groups = Signal(32)
        load_left = Signal(range(max(cfg.k * cfg.codeword_bits // bus, cfg.max_rows,
                                     cfg.act_beats(cfg.max_cols)) + 2))
        total_blocks = Signal(32)
        blocks_left = Signal(32)     # weight blocks still to be received
        wfirst = Signal()            # first cycle of the weight phase: blocks_left not loaded yet
        out_left = Signal(16)
        # Registered every cycle; valid from the cycle after the header, long before use.
        m.d.sync += total_groups.eq(rows * groups)

        def ceil_blocks(name):
            n = geo[name].groups
            return (total_groups + n - 1) >> _log2(n)
        # Valid from the third cycle after the header; first used in the first weight cycle,
        # which is at least the third (header, params and acts take a beat each at least).
        m.d.sync += total_blocks.eq(Mux(
            mode == MODE_ID["int8"], ceil_blocks("int8"),
            Mux(mode == MODE_ID["vq"], ceil_blocks("vq"), ceil_blocks("ssvq"))))

        def per_mode(attr):
            return Mux(mode == MODE_ID["int8"], getattr(geo["int8"], attr),
                       Mux(mode == MODE_ID["vq"], getattr(geo["vq"], attr),
                           getattr(geo["ssvq"], attr)))

        block_beats = Signal(range(cfg.max_block_beats + 1))
        block_groups = Signal(range(max(g.groups for g in geo.values()) + 1))
        primary_beats = Signal.like(block_beats)
        m.d.comb += [block_beats.eq(per_mode("beats")), block_groups.eq(per_mode("groups")),
                     primary_beats.eq(per_mode("primary_beats"))]

        # ---- output side and the pipeline enable ----
        # Output back-pressure freezes the whole compute pipeline: simple, and exact
        # because nothing ahead of the output register has side effects while frozen.
        o_valid = Signal()
        o_data = Signal(bus)
        en = Signal()
        m.d.comb += [o_s.valid.eq(o_valid), o_s.payload.eq(o_data),
                     en.eq(~(o_valid & ~o_s.ready))]
        last_out = Signal()
        m.d.comb += last_out.eq(o_valid & o_s.ready & (out_left == 1))

        # ---- weight block fill register and compute register ----
        bmax = cfg.max_block_beats
        fill = [Signal(bus, name=f"fill{i}") for i in range(bmax)]
        fill_count = Signal(range(bmax + 1))
        creg = Signal(bmax * bus)
        remaining = Signal(range(max(g.groups for g in geo.values()) + 1))
        pidx = Signal.like(remaining)
        transfer = Signal()
        m.d.comb += transfer.eq((phase == Phase.WEIGHTS) & en & (fill_count == block_beats)
                                & (remaining <= 1))
        slot = Signal.like(fill_count)
        m.d.comb += slot.eq(Mux(transfer, 0, fill_count))

        # ---- input ready and the load phases ----
        with m.Switch(phase):
            with m.Case(Phase.IDLE, Phase.CODEBOOK, Phase.PARAMS, Phase.ACTS):
                m.d.comb += i_s.ready.eq(1)
            with m.Case(Phase.WEIGHTS):
                m.d.comb += i_s.ready.eq((wfirst | (blocks_left != 0))
                                         & ((fill_count < block_beats) | transfer))

        m.d.comb += [
            cbm.w_data.eq(i_s.payload), prm.w_data.eq(i_s.payload), actm.w_data.eq(i_s.payload),
            cbm.w_en.eq(accept & (phase == Phase.CODEBOOK)),
            prm.w_en.eq(accept & (phase == Phase.PARAMS)),
            actm.w_en.eq(accept & (phase == Phase.ACTS)),
        ]

        starting = Signal()
        m.d.comb += starting.eq((phase == Phase.IDLE) & accept)
        m.d.comb += [cbm.clear.eq(starting), prm.clear.eq(starting), actm.clear.eq(starting)]

        hdr = i_s.payload
        hdr_mode, hdr_rows, hdr_cols = hdr[0:8], hdr[8:24], hdr[24:40]
        per_param_beat = bus // RECORD_BITS
        act_bits = cfg.act_word_bits

        def act_beats_of(g):
            if bus <= act_bits:
                return g * (act_bits // bus)
            per = bus // act_bits
            return (g + per - 1) >> _log2(per)

        cnt = {c: getattr(self, f"cnt_{c}") for c in COUNTERS}

        def count(name):
            m.d.sync += cnt[name].eq(cnt[name] + 1)

        with m.Switch(phase):
            with m.Case(Phase.IDLE):
                with m.If(accept):
                    g = (hdr_cols + cfg.mults - 1) >> _log2(cfg.mults)
                    m.d.sync += [
                        mode.eq(hdr_mode), rows.eq(hdr_rows), groups.eq(g),
                        out_left.eq((hdr_rows + bus // OUT_BITS - 1) >> _log2(bus // OUT_BITS)),
                        self.busy.eq(1),
                    ]
                    m.d.sync += [cnt[c].eq(0) for c in COUNTERS]
                    m.d.sync += [cnt["cycles"].eq(1), cnt["header"].eq(1)]
                    with m.If(hdr_mode == MODE_ID["int8"]):
                        m.d.sync += [phase.eq(Phase.PARAMS),
                                     load_left.eq((hdr_rows + per_param_beat - 1)
                                                  >> _log2(per_param_beat))]
                    with m.Else():
                        m.d.sync += [phase.eq(Phase.CODEBOOK),
                                     load_left.eq(cfg.k * cfg.codeword_bits // bus)]
            with m.Case(Phase.CODEBOOK):
                with m.If(accept):
                    count("codebook")
                    m.d.sync += load_left.eq(load_left - 1)
                    with m.If(load_left == 1):
                        m.d.sync += [phase.eq(Phase.PARAMS),
                                     load_left.eq((rows + per_param_beat - 1)
                                                  >> _log2(per_param_beat))]
            with m.Case(Phase.PARAMS):
                with m.If(accept):
                    count("params")
                    m.d.sync += load_left.eq(load_left - 1)
                    with m.If(load_left == 1):
                        m.d.sync += [phase.eq(Phase.ACTS), load_left.eq(act_beats_of(groups))]
            with m.Case(Phase.ACTS):
                with m.If(accept):
                    count("acts")
                    m.d.sync += load_left.eq(load_left - 1)
                    with m.If(load_left == 1):
                        m.d.sync += [phase.eq(Phase.WEIGHTS), wfirst.eq(1)]
            with m.Case(Phase.WEIGHTS):
                m.d.sync += [wfirst.eq(0),
                             blocks_left.eq(Mux(wfirst, total_blocks, blocks_left)
                                            - (accept & (slot == block_beats - 1)))]
                with m.If(accept):
                    with m.If(slot < primary_beats):
                        with m.If(mode == MODE_ID["int8"]):
                            count("weights")
                        with m.Else():
                            count("codes")
                    with m.Else():
                        count("signs")
                    with m.Switch(slot):
                        for i in range(bmax):
                            with m.Case(i):
                                m.d.sync += fill[i].eq(i_s.payload)
                with m.If(last_out):
                    m.d.sync += [phase.eq(Phase.IDLE), self.busy.eq(0)]

        with m.If(self.busy):
            count("cycles")
        with m.If(self.busy & ((i_s.ready & ~i_s.valid) | (o_valid & ~o_s.ready))):
            count("stall")
        with m.If(o_valid & o_s.ready):
            count("out")

        # fill / compute register hand-over
        with m.If(transfer):
            m.d.sync += [creg.eq(Cat(*fill)), remaining.eq(block_groups), pidx.eq(0),
                         fill_count.eq(accept)]
        with m.Elif(accept & (phase == Phase.WEIGHTS)):
            m.d.sync += fill_count.eq(fill_count + 1)

        # ---- issue: one group per cycle from the compute register ----
        issuing = Signal()
        m.d.comb += issuing.eq(en & (remaining != 0))
        with m.If(issuing & ~transfer):
            m.d.sync += [remaining.eq(remaining - 1), pidx.eq(pidx + 1)]

        g_prim = Signal(max(g.primary_bits_per_group for g in geo.values()))
        g_sign = Signal(cfg.mults)
        with m.Switch(mode):
            for name in MODES:
                gm = geo[name]
                with m.Case(MODE_ID[name]):
                    with m.Switch(pidx):
                        for p in range(gm.groups):
                            with m.Case(p):
                                pb = gm.primary_bits_per_group
                                m.d.comb += g_prim.eq(creg[p * pb:(p + 1) * pb])
                                if gm.sign_beats:
                                    base = gm.primary_beats * bus + p * cfg.mults
                                    m.d.comb += g_sign.eq(creg[base:base + cfg.mults])

        q_cnt = Signal(range(max_groups + 1))
        r_cnt = Signal(17)
        real = Signal()
        m.d.comb += real.eq(r_cnt < rows)
        with m.If(issuing):
            with m.If(q_cnt == groups - 1):
                m.d.sync += [q_cnt.eq(0), r_cnt.eq(r_cnt + 1)]
            with m.Else():
                m.d.sync += q_cnt.eq(q_cnt + 1)

        m.d.comb += [cbm.r_en.eq(en), actm.r_en.eq(en), prm.r_en.eq(en),
                     actm.r_addr[0].eq(q_cnt)]
        cb = cfg.code_bits
        for lane in range(lanes):
            m.d.comb += cbm.r_addr[lane].eq(g_prim[lane * cb:(lane + 1) * cb])

        # stage 1: memories read; signs / int8 weights and row bookkeeping follow
        v1, first1, last1 = Signal(), Signal(), Signal()
        row1 = Signal(16)
        sign1 = Signal(cfg.mults)
        w8_1 = Signal(len(g_prim))
        with m.If(en):
            m.d.sync += [v1.eq(issuing & real), first1.eq(q_cnt == 0),
                         last1.eq(q_cnt == groups - 1), row1.eq(r_cnt),
                         sign1.eq(g_sign), w8_1.eq(g_prim)]

        # stage 2: decode to signed 9-bit weights (registered: the codebook RAM's output
        # feeding the multipliers directly was the critical path, 49.8 MHz on ECP5)
        wregs, aregs = [], []
        for lane in range(lanes):
            cw = cbm.r_data[lane]
            for j in range(d):
                e = lane * d + j
                w = Signal(signed(9), name=f"w{e}")
                mag = cw.word_select(j, 8)
                with m.Switch(mode):
                    with m.Case(MODE_ID["ssvq"]):
                        m.d.comb += w.eq(Mux(sign1[e], -mag, mag))
                    with m.Case(MODE_ID["vq"]):
                        m.d.comb += w.eq(mag.as_signed())
                    with m.Default():
                        m.d.comb += w.eq(w8_1.word_select(e, 8).as_signed())
                wr = Signal(signed(9), name=f"wr{e}")
                ar = Signal(signed(8), name=f"ar{e}")
                with m.If(en):
                    m.d.sync += [wr.eq(w), ar.eq(actm.r_data[0].word_select(e, 8).as_signed())]
                wregs.append(wr)
                aregs.append(ar)
        vd, firstd, lastd = Signal(), Signal(), Signal()
        rowd = Signal(16)
        with m.If(en):
            m.d.sync += [vd.eq(v1), firstd.eq(first1), lastd.eq(last1), rowd.eq(row1)]

        # stage 2b: multiply
        prods = []
        for e, (wr, ar) in enumerate(zip(wregs, aregs)):
            pr = Signal(signed(17), name=f"prod{e}")
            with m.If(en):
                m.d.sync += pr.eq(wr * ar)
            prods.append(pr)
        v2, first2, last2 = Signal(), Signal(), Signal()
        row2 = Signal(16)
        with m.If(en):
            m.d.sync += [v2.eq(vd), first2.eq(firstd), last2.eq(lastd), row2.eq(rowd)]

        # stage 3: adder tree in two registered halves (one 32-input tree per cycle was the
        # critical path, 74.6 MHz on ECP5); the row's requantization record is read meanwhile
        chunk = 8
        partial = []
        for i in range(0, len(prods), chunk):
            ps = Signal(signed(17 + 3), name=f"partial{i // chunk}")
            with m.If(en):
                m.d.sync += ps.eq(_tree_sum(prods[i:i + chunk]))
            partial.append(ps)
        vt, firstt, lastt = Signal(), Signal(), Signal()
        rowt = Signal(16)
        with m.If(en):
            m.d.sync += [vt.eq(v2), firstt.eq(first2), lastt.eq(last2), rowt.eq(row2)]
        psum = Signal(signed(ACC_BITS))
        v3, first3, last3 = Signal(), Signal(), Signal()
        row3 = Signal(16)
        m.d.comb += prm.r_addr[0].eq(rowt)
        with m.If(en):
            m.d.sync += [psum.eq(_tree_sum(partial)), v3.eq(vt), first3.eq(firstt),
                         last3.eq(lastt), row3.eq(rowt)]

        # stage 4: accumulate; at a row's end add the bias
        acc = Signal(signed(ACC_BITS))
        acc_next = Signal(signed(ACC_BITS))
        m.d.comb += acc_next.eq(Mux(first3, psum, acc + psum))
        rec = prm.r_data[0]
        v4, lastrow4 = Signal(), Signal()
        biased = Signal(signed(ACC_BITS + 1))
        mult4 = Signal(MULT_BITS)
        shift4 = Signal(SHIFT_BITS)
        with m.If(en):
            m.d.sync += v4.eq(v3 & last3)
            with m.If(v3):
                m.d.sync += acc.eq(acc_next)
            with m.If(v3 & last3):
                m.d.sync += [biased.eq(acc_next + rec[0:32].as_signed()),
                             mult4.eq(rec[32:48]), shift4.eq(rec[48:54]),
                             lastrow4.eq(row3 == rows - 1)]

        # stage 5: scale; the rounding constant is formed here, off the next stage's path
        scaled = Signal(signed(ACC_BITS + 1 + MULT_BITS + 1))
        half = Signal(64)
        v5, lastrow5 = Signal(), Signal()
        shift5 = Signal(SHIFT_BITS)
        with m.If(en):
            m.d.sync += [scaled.eq(biased * mult4), v5.eq(v4), lastrow5.eq(lastrow4),
                         shift5.eq(shift4),
                         half.eq((Const(1, unsigned(64)) << (shift4 - 1)[:SHIFT_BITS])[:64])]

        # stage 6: round half up and shift (64-bit constant: shift may exceed the
        # product's width, giving 0 or -1 as the golden model's int64 arithmetic does)
        rounded = Signal(signed(66))
        v6, lastrow6 = Signal(), Signal()
        with m.If(en):
            m.d.sync += [rounded.eq((scaled + half) >> shift5), v6.eq(v5), lastrow6.eq(lastrow5)]

        # stage 7: saturate and pack into output beats
        y = Signal(signed(8))
        m.d.comb += y.eq(Mux(rounded > 127, 127, Mux(rounded < -128, -128, rounded)))
        per_beat = bus // OUT_BITS
        pack = Signal(bus)
        pack_idx = Signal(range(per_beat))
        packed = Signal(bus)
        with m.Switch(pack_idx):
            for i in range(per_beat):
                with m.Case(i):
                    m.d.comb += packed.eq(pack)
                    m.d.comb += packed.word_select(i, 8).eq(y)

        with m.If(o_valid & o_s.ready):
            m.d.sync += [o_valid.eq(0), out_left.eq(out_left - 1)]
        with m.If(en & v6):
            with m.If((pack_idx == per_beat - 1) | lastrow6):
                m.d.sync += [o_valid.eq(1), o_data.eq(packed), pack.eq(0), pack_idx.eq(0)]
            with m.Else():
                m.d.sync += [pack.eq(packed), pack_idx.eq(pack_idx + 1)]

        # A new layer starts from a clean compute side.
        with m.If(starting):
            m.d.sync += [fill_count.eq(0), remaining.eq(0), pidx.eq(0), q_cnt.eq(0),
                         r_cnt.eq(0), pack.eq(0), pack_idx.eq(0)]
        return m


def _tree_sum(values):
    while len(values) > 1:
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]
