from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


class BeatMemory(wiring.Component):
    """Fixed-width records written from consecutive bus beats, read back by index.

    A word of the underlying memory is max(record, bus) bits, so a beat never
    straddles two writes: either several beats make one word (wide records) or one
    beat holds several records (narrow records). Either way the load takes exactly
    one beat per cycle. Reads are synchronous with `r_en` as the pipeline enable;
    the record appears on `r_data` the cycle after `r_addr`.
    """

    def __init__(self, *, record_bits: int, depth: int, bus: int, read_ports: int = 1):
        self.record_bits = record_bits
        self.word_bits = max(record_bits, bus)
        self.per_word = self.word_bits // record_bits
        self.beats_per_word = self.word_bits // bus
        self.words = -(-depth // self.per_word)
        self.bus = bus
        self.n_read = read_ports
        super().__init__({
            "clear": In(1),
            "w_en": In(1),
            "w_data": In(bus),
            "r_en": In(1),
            "r_addr": In(range(max(depth, 2))).array(read_ports),
            "r_data": Out(record_bits).array(read_ports),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self.word_bits), depth=self.words, init=[])

        wp = mem.write_port()
        waddr = Signal(range(max(self.words, 2)))
        with m.If(self.clear):
            m.d.sync += waddr.eq(0)
        if self.beats_per_word == 1:
            m.d.comb += [wp.addr.eq(waddr), wp.data.eq(self.w_data), wp.en.eq(self.w_en)]
            with m.If(self.w_en):
                m.d.sync += waddr.eq(waddr + 1)
        else:
            held = [Signal(self.bus, name=f"held{i}") for i in range(self.beats_per_word - 1)]
            idx = Signal(range(self.beats_per_word))
            last = idx == self.beats_per_word - 1
            m.d.comb += [wp.addr.eq(waddr), wp.data.eq(Cat(*held, self.w_data)),
                         wp.en.eq(self.w_en & last)]
            with m.If(self.w_en):
                with m.If(last):
                    m.d.sync += [idx.eq(0), waddr.eq(waddr + 1)]
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)
                    with m.Switch(idx):
                        for i, h in enumerate(held):
                            with m.Case(i):
                                m.d.sync += h.eq(self.w_data)
            with m.If(self.clear):
                m.d.sync += idx.eq(0)

        sel_bits = (self.per_word - 1).bit_length()
        for i in range(self.n_read):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(self.r_addr[i] >> sel_bits), rp.en.eq(self.r_en)]
            if self.per_word == 1:
                m.d.comb += self.r_data[i].eq(rp.data)
            else:
                sel = Signal(sel_bits, name=f"sel{i}")
                with m.If(self.r_en):
                    m.d.sync += sel.eq(self.r_addr[i][:sel_bits])
                m.d.comb += self.r_data[i].eq(rp.data.word_select(sel, self.record_bits))
        return m
