"""The generated top `ssvq_accel`: the core (hw/accel.py, `amaranth.lib.stream`
ports) behind AXI4-Stream and an AXI4-Lite register block (hw/regs.rdl).

Ports (flat signature members, so Amaranth names the Verilog ports exactly
`s_axis_tdata`, ... instead of the `s_axis__tdata` a nested signature gives, and
no text rewriting of the Verilog is needed):

    s_axis_tdata/tvalid/tready/tlast   layer streams in
    m_axis_tdata/tvalid/tready/tlast   int8 outputs; tlast on each layer's last beat
    s_axil_*                           AXI4-Lite slave, 32-bit data, 8-bit address
    irq                                |(IRQ_STATUS & IRQ_ENABLE)
    busy                               a layer is in flight (STATUS.busy as a pin)

Framing and errors: the core knows every layer's beat count from its header, so
s_axis_tlast is checked: tlast on a beat before the layer's last, or no tlast on
its last beat, is an error (causes 11, 12). A header the build cannot run (bad
magic, version 1, mode/K/D/bits/M/coefficient width the build lacks, rows or
cols out of range) is an error too, found while it is decoded, before any beat
of the layer's load sections is accepted. An error latches STATUS.error and
.cause, stops the core (it accepts no more beats and stays in its state; output
beats already in the pipeline still come out), and from then on s_axis_tready is
high and every input beat is dropped, so an upstream DMA never hangs; only a soft
reset (CTRL.soft_reset) or rst clears it.

Counter bank: the core's live counters clear when the next layer's first header
beat is accepted, which may be the cycle after a layer's last output beat. The
register block reads a bank latched in that cycle (when the counters are final),
so software reading CNT_* after the done interrupt always gets the finished
layer's values, however soon the next layer starts.
"""
from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.accel import COUNTER_BITS, Accelerator
from hw.regs import (ADDR_BITS, CAUSES, COUNTER_REGS, AxiLiteRegs, axil_members,
                     build_values, port_name)
from ssvq.config import COUNTERS, AccelConfig


class AcceleratorTop(wiring.Component):
    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        members = {"s_axis_tdata": In(cfg.bus), "s_axis_tvalid": In(1),
                   "s_axis_tready": Out(1), "s_axis_tlast": In(1),
                   "m_axis_tdata": Out(cfg.bus), "m_axis_tvalid": Out(1),
                   "m_axis_tready": In(1), "m_axis_tlast": Out(1)}
        members.update(axil_members(ADDR_BITS))
        members.update({"irq": Out(1), "busy": Out(1)})
        super().__init__(members)

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        soft = Signal()
        core = Accelerator(cfg)
        # The core's reset is one flip-flop (`core_rst`, set by rst and by a soft reset,
        # the core's clock domain's only reset): a gate of rst and the soft-reset bit
        # in front of all the core's flip-flops was the worst path of the whole design
        # (a LUT and three long routes). The core is cleared a cycle later than the top,
        # so in the cycle core_rst is high the top hides the core: no input beat is
        # taken (tready low), no output beat is offered, busy reads low and no error or
        # layer end is latched. After a reset the first beat is taken one cycle later;
        # every later cycle of a layer counts from its first header beat, as before.
        core_rst = Signal(init=1)
        m.d.sync += core_rst.eq(soft)
        m.domains.core = cd = ClockDomain("core", local=True)
        m.d.comb += [cd.clk.eq(ClockSignal("sync")), cd.rst.eq(core_rst)]
        m.submodules.core = DomainRenamer("core")(core)
        m.submodules.regs = regs = AxiLiteRegs(ADDR_BITS)
        for name in axil_members(ADDR_BITS):
            a, b = getattr(self, name), getattr(regs, name)
            m.d.comb += (b.eq(a) if regs.signature.members[name].flow == In else a.eq(b))
        r = lambda reg, field: getattr(regs, port_name(reg, field))   # noqa: E731
        for n, v in build_values(cfg).items():
            m.d.comb += getattr(regs, n).eq(v)
        m.d.comb += [soft.eq(r("CTRL", "soft_reset")), regs.clear.eq(soft)]

        # ---- error latch (cleared by rst and soft reset). `blocked` is err | core_rst
        # as one flip-flop of its own (same next-state rules), so the input's valid
        # gate is one flip-flop, as before the core reset had its register.
        err = Signal()
        blocked = Signal(init=1)
        cause = Signal(4)
        i_s, o_s = core.i_stream, core.o_stream
        fire = Signal()
        err_set = Signal()
        new_cause = Signal(4)
        m.d.comb += [i_s.valid.eq(self.s_axis_tvalid & ~blocked),
                     i_s.payload.eq(self.s_axis_tdata),
                     self.s_axis_tready.eq((i_s.ready & ~core_rst) | err),
                     fire.eq(self.s_axis_tvalid & i_s.ready & ~blocked),
                     # registered: the loader's DECODE outlasts the cause check by far
                     core.halt.eq(err)]
        with m.If(~blocked):
            with m.If(core.hdr_cause != 0):
                m.d.comb += [err_set.eq(1), new_cause.eq(core.hdr_cause)]
            with m.Elif(fire & self.s_axis_tlast & ~core.in_last):
                m.d.comb += [err_set.eq(1), new_cause.eq(CAUSES["tlast_early"])]
            with m.Elif(fire & ~self.s_axis_tlast & core.in_last):
                m.d.comb += [err_set.eq(1), new_cause.eq(CAUSES["tlast_missing"])]
        with m.If(err_set):
            m.d.sync += [err.eq(1), blocked.eq(1), cause.eq(new_cause)]
        with m.Elif(~err):
            m.d.sync += blocked.eq(0)
        err_q = Signal()
        m.d.sync += err_q.eq(err)

        # ---- output stream
        m.d.comb += [self.m_axis_tdata.eq(o_s.payload),
                     self.m_axis_tvalid.eq(o_s.valid & ~core_rst),
                     o_s.ready.eq(self.m_axis_tready), self.m_axis_tlast.eq(core.o_last)]

        # ---- counter bank, layer count, done: latched the cycle after layer_done
        done_q = Signal()
        done = Signal()
        layers = Signal(32)
        bank = {c: Signal(COUNTER_BITS, name=f"bank_{c}") for c in COUNTERS}
        m.d.sync += done_q.eq(core.layer_done & ~core_rst)
        with m.If(core.started):
            m.d.sync += done.eq(0)
        with m.If(done_q):
            m.d.sync += [done.eq(1), layers.eq(layers + 1)]
            m.d.sync += [bank[c].eq(getattr(core, f"cnt_{c}")) for c in COUNTERS]
        with m.If(soft):
            m.d.sync += [err.eq(0), blocked.eq(1), cause.eq(0), err_q.eq(0), done_q.eq(0),
                         done.eq(0), layers.eq(0)] + [b.eq(0) for b in bank.values()]

        for c in COUNTERS:
            m.d.comb += r(COUNTER_REGS[c], "value").eq(bank[c])
        busy = core.busy & ~core_rst
        m.d.comb += [r("STATUS", "busy").eq(busy), r("STATUS", "done").eq(done),
                     r("STATUS", "error").eq(err), r("STATUS", "cause").eq(cause),
                     r("LAYERS", "count").eq(layers),
                     getattr(regs, "irq_status_done_set").eq(done_q),
                     getattr(regs, "irq_status_error_set").eq(err & ~err_q),
                     self.busy.eq(busy),
                     self.irq.eq((r("IRQ_STATUS", "done") & r("IRQ_ENABLE", "done"))
                                 | (r("IRQ_STATUS", "error") & r("IRQ_ENABLE", "error")))]
        return m
