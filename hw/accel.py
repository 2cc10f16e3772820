"""Decode-and-MAC accelerator: layer images in, int8 outputs out; every layer's
mode, K, D, bit width and codeword count chosen at run time by its header.

    i_stream -> SectionLoader (gearbox, header, memory writes, group issue)
             -> IntDecode | CodebookDecode -> MacArray -> Requantizer
             -> OutputPacker -> o_stream
The same multipliers serve every mode, so int8 and int4 are fair baselines on the
same bus. docs/ARCH.md has the ports and timing; docs/FORMAT.md the stream.
"""
from amaranth.hdl import Const, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.decode import CodebookDecode, IntDecode
from hw.loader import InPhase, SectionLoader
from hw.mac import MacArray
from hw.memories import RecordMemory
from hw.packer import OutputPacker
from hw.requant import Requantizer
from ssvq.config import (ACT_BITS, COUNTERS, HEADER_MAGIC, HEADER_MAGIC_V1, PARAM_BITS,
                         AccelConfig, Mode, log2)

COUNTER_BITS = 32
DECODE_LATENCY = max(IntDecode.LATENCY, CodebookDecode.LATENCY)
assert IntDecode.LATENCY == CodebookDecode.LATENCY
# Cycles from a weight group's take (at the gearbox) to the output beat holding the
# row it ends being valid: the sum of the stages it passes. sim/golden.py uses it.
PIPELINE_DEPTH = (SectionLoader.ISSUE_LATENCY + DECODE_LATENCY + MacArray.LATENCY
                  + Requantizer.LATENCY + OutputPacker.LATENCY)
SECTION_OF = {InPhase.HEADER: "header", InPhase.CODEBOOK: "codebook",
              InPhase.PARAMS: "params", InPhase.ACTS: "acts", InPhase.WEIGHTS: "weights"}


def header_rules(cfg: AccelConfig, hdr) -> list:
    """(cause name, bad) for each rule a header this build can run must pass: the same
    rules as AccelConfig.check_layer, in its order (the first failing rule wins)."""
    is_int = hdr.mode == Mode.INT
    mode_ok = Const(0, 1)
    for md in cfg.modes:
        mode_ok = mode_ok | (hdr.mode == Mode[md.upper()])
    bits_ok = Const(0, 1)
    for b in cfg.int_bits:
        bits_ok = bits_ok | (hdr.bits == b)
    d_ok = Const(0, 1)
    for d in cfg.d_set:
        d_ok = d_ok | (hdr.log2_d == log2(d))
    rules = [
        ("magic", (hdr.magic != HEADER_MAGIC) & (hdr.magic != HEADER_MAGIC_V1)),
        ("version", hdr.magic == HEADER_MAGIC_V1),
        ("mode", ~mode_ok),
        ("bits", is_int & ~bits_ok),
        ("k", ~is_int & ((hdr.code_bits > log2(cfg.kmax)) | (hdr.code_bits == 0))),
        ("d", ~is_int & ~d_ok),
        ("m", ~is_int & ((hdr.m == 0) | (hdr.m > cfg.m_max))),
        ("coef_bits", ~is_int & (hdr.coef_bits > cfg.coef_bits_max)),
        ("rows", (hdr.rows == 0) | (hdr.rows > cfg.max_rows)),
        ("cols", (hdr.cols == 0) | (hdr.cols > cfg.max_cols)),
    ]
    return rules


def first_cause(verdicts) -> Value:
    """Cause code (hw.regs.CAUSES) of the first (name, bad) that is bad, 0 if none."""
    from hw.regs import CAUSES

    cause = Const(0, 4)
    for name, bad in reversed(verdicts):
        cause = Mux(bad, CAUSES[name], cause)
    return cause


class Accelerator(wiring.Component):
    """The core: `amaranth.lib.stream` ports, busy and the live counters. The
    generated top (hw/top.py) wraps it in AXI4-Stream and AXI4-Lite."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        ports = {"i_stream": In(stream.Signature(cfg.bus)),
                 "o_stream": Out(stream.Signature(cfg.bus)),
                 "busy": Out(1),
                 # framing and error checks (used by the top, hw/top.py)
                 "halt": In(1),          # stop: accept no input beat, do not leave DECODE
                 "in_last": Out(1),      # an input beat accepted now is the layer's last
                 "o_last": Out(1),       # the beat on o_stream is the layer's last
                 "hdr_cause": Out(4),    # the latched header is bad (hw.regs.CAUSES), 0: ok
                 "started": Out(1),      # a layer's first header beat is accepted
                 "layer_done": Out(1)}   # a layer's last output beat is accepted
        ports.update({f"cnt_{c}": Out(COUNTER_BITS) for c in COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.loader = ld = SectionLoader(cfg)
        m.submodules.acts = acts = RecordMemory(cfg.mults * ACT_BITS, ld.gmax)
        m.submodules.mac = mac = MacArray(cfg)
        m.submodules.requant = rq = Requantizer(cfg)
        m.submodules.packer = pk = OutputPacker(cfg, len(rq.o_value))
        wiring.connect(m, wiring.flipped(self.i_stream), ld.i_stream)
        wiring.connect(m, pk.o_stream, wiring.flipped(self.o_stream))
        en = pk.en
        hdr = ld.hdr
        # `started` is a registered copy for everything that needs it only later (the
        # packer's clear, the counters' clear): the combinational one ends a path from
        # the input handshake through the first-beat test to hundreds of registers
        started_q = Signal()
        m.d.sync += started_q.eq(ld.started)
        m.d.comb += [ld.en.eq(en), ld.layer_done.eq(pk.layer_done), pk.start.eq(started_q),
                     ld.halt.eq(self.halt), self.in_last.eq(ld.last_beat),
                     self.o_last.eq(pk.o_last), self.started.eq(ld.started),
                     self.layer_done.eq(pk.layer_done)]
        # the header check in two register stages (each rule's verdict, then the first
        # that fails): DECODE has cycles to spare (the error latch halts it in its 7th
        # of SectionLoader.DECODE_CYCLES = 12 cycles, hw/top.py), and done in one cycle
        # it was the whole design's worst path (fields -> ten compares -> error latch)
        verdicts = []
        for name, bad in header_rules(cfg, hdr):
            v = Signal(name=f"bad_{name}")
            m.d.sync += v.eq(ld.decoding & bad)
            verdicts.append((name, v))
        cause_q = Signal(4)
        m.d.sync += cause_q.eq(first_cause(verdicts))
        m.d.comb += self.hdr_cause.eq(cause_q)

        # activations: written by the loader, read with the group's index (stage 1)
        m.d.comb += [acts.w_en.eq(ld.act_w_en), acts.w_addr.eq(ld.act_w_addr),
                     acts.w_data.eq(ld.w_data[:cfg.mults * ACT_BITS]),
                     acts.r_en.eq(en), acts.r_addr[0].eq(ld.g_q)]

        # decoders: one per family built; the header's mode picks the result
        decoded = []
        if "int" in cfg.modes:
            m.submodules.int_decode = idec = IntDecode(cfg)
            m.d.comb += [idec.en.eq(en), idec.grp.eq(ld.grp), idec.bits.eq(hdr.bits)]
            decoded.append((Mode.INT, idec.w))
        if cfg.codebook_modes:
            m.submodules.cb_decode = cdec = CodebookDecode(cfg)
            m.d.comb += [cdec.en.eq(en), cdec.grp.eq(ld.grp), cdec.mode.eq(hdr.mode),
                         cdec.code_bits.eq(hdr.code_bits), cdec.coef_bits.eq(hdr.coef_bits),
                         cdec.log2_d.eq(hdr.log2_d), cdec.m.eq(hdr.m),
                         cdec.w_en.eq(ld.cb_w_en), cdec.w_addr.eq(ld.cb_w_addr),
                         cdec.w_data.eq(ld.w_data[:len(cdec.w_data)])]
            decoded.append((None, cdec.w))

        # the group's tag and activations travel beside the decoders
        tag = [ld.g_valid, ld.g_first, ld.g_last, ld.g_row, ld.g_lastrow]
        for s in range(DECODE_LATENCY):
            nxt = [Signal.like(t, name=f"tag{s}_{i}") for i, t in enumerate(tag)]
            with m.If(en):
                m.d.sync += [n.eq(t) for n, t in zip(nxt, tag)]
            tag = nxt
        a = acts.r_data[0]                       # valid RecordMemory.LATENCY after the group
        for s in range(DECODE_LATENCY - RecordMemory.LATENCY):
            nxt = Signal.like(a, name=f"act_s{s}")
            with m.If(en):
                m.d.sync += nxt.eq(a)
            a = nxt
        for e in range(cfg.mults):
            if len(decoded) == 1:
                w = decoded[0][1][e]
            else:
                w = Mux(hdr.mode == Mode.INT, decoded[0][1][e], decoded[1][1][e])
            m.d.comb += [mac.w[e].eq(w), mac.a[e].eq(a.word_select(e, ACT_BITS).as_signed())]
        m.d.comb += [mac.en.eq(en), mac.valid.eq(tag[0]), mac.first.eq(tag[1]),
                     mac.last.eq(tag[2]), mac.row.eq(tag[3]), mac.lastrow.eq(tag[4])]

        m.d.comb += [rq.en.eq(en), rq.w_en.eq(ld.prm_w_en), rq.w_addr.eq(ld.prm_w_addr),
                     rq.w_data.eq(ld.w_data[:PARAM_BITS]), rq.valid.eq(mac.o_valid),
                     rq.acc.eq(mac.o_acc), rq.row.eq(mac.o_row), rq.lastrow.eq(mac.o_lastrow)]
        m.d.comb += [pk.valid.eq(rq.o_valid), pk.value.eq(rq.o_value),
                     pk.lastrow.eq(rq.o_lastrow)]

        # busy and the performance counters. A layer's counts start at its first header
        # beat (cycle t0: cycles 1, header 1, the rest 0). The clear is applied a cycle
        # late, from started_q: in t0 + 1 each counter is loaded with its t0 value plus
        # what t0 + 1 adds, so from t0 + 1 on the counts are those of a clear at t0. (The
        # counter bank, hw/top.py, latches the previous layer's counts the cycle after
        # its last output beat, which is t0 at the latest: a header is accepted only
        # after that beat.)
        with m.If(ld.started):
            m.d.sync += self.busy.eq(1)
        with m.Elif(pk.layer_done):
            m.d.sync += self.busy.eq(0)
        i_s, o_s = self.i_stream, self.o_stream
        inc = {"cycles": self.busy,
               "stall": self.busy & ((i_s.ready & ~i_s.valid) | (o_s.valid & ~o_s.ready)),
               "out": o_s.valid & o_s.ready}
        inc.update({name: ld.accept & (ld.in_phase == ph) for ph, name in SECTION_OF.items()})
        for c in COUNTERS:
            # the count-up condition only selects (an enable, a choice of constants):
            # the +1 is worked out from the register alone
            cnt = getattr(self, f"cnt_{c}")
            base = int(c in ("cycles", "header"))
            with m.If(started_q):
                m.d.sync += cnt.eq(Mux(inc[c], base + 1, base))
            with m.Elif(inc[c]):
                m.d.sync += cnt.eq(cnt + 1)
        return m
