"""On-chip record memories, loaded from the stream at run time (no init)."""
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.prims import dp16kd_memory, use_primitives


class RecordMemory(wiring.Component):
    """`depth` words of `width` bits: one write port and `read_ports` read ports with
    registered outputs. Read data is valid TWO cycles after the address (the
    memory's address register, then its output register); `r_en` (the pipeline
    enable) clocks both, so a frozen pipeline holds its data. Loaded at run time,
    never read before it is written in the same layer: no initial content."""
    LATENCY = 2

    def __init__(self, width: int, depth: int, read_ports: int = 1):
        self.width, self.depth, self.n_read = width, depth, read_ports
        super().__init__({
            "w_en": In(1), "w_addr": In(range(max(depth, 2))), "w_data": In(width),
            "r_en": In(1),
            "r_addr": In(range(max(depth, 2))).array(read_ports),
            "r_data": Out(width).array(read_ports),
        })

    def elaborate(self, platform):
        m = Module()
        if use_primitives(platform):
            dp16kd_memory(m, self)
            return m
        m.submodules.mem = mem = Memory(shape=self.width, depth=max(self.depth, 2), init=[])
        wp = mem.write_port()
        m.d.comb += [wp.en.eq(self.w_en), wp.addr.eq(self.w_addr), wp.data.eq(self.w_data)]
        for i in range(self.n_read):
            rp = mem.read_port()
            m.d.comb += [rp.en.eq(self.r_en), rp.addr.eq(self.r_addr[i])]
            with m.If(self.r_en):
                m.d.sync += self.r_data[i].eq(rp.data)
        return m
