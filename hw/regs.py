"""AXI4-Lite register block of the top (`ssvq_accel`), built from hw/regs.rdl.

hw/regs.rdl (SystemRDL) is the one description of the map: `register_map()`
compiles it with systemrdl-compiler into a table of registers and fields, and
`AxiLiteRegs` makes one port per field from that table:

  * read-only fields (sw = r):      In  ``<reg>_<field>``       (the top drives them)
  * read-write fields (sw = rw):    Out ``<reg>_<field>``       (storage here, RDL reset)
  * write-1-to-clear with hwset:    Out ``<reg>_<field>``, In ``<reg>_<field>_set``
  * singlepulse fields (sw = w):    Out ``<reg>_<field>``       (high one cycle per write)

`clear` (the top's soft reset) clears the write-1-to-clear fields. Unmapped
addresses read 0, writes to them or to read-only fields are ignored; every
response is OKAY. One outstanding read and one outstanding write: AR is accepted
while no read response is pending (a read costs 2 cycles with rready high),
AW and W are latched independently and the write happens once both are in.
`write_outputs(out_dir)` writes the C header (peakrdl-cheader) and the markdown
(peakrdl-markdown) from the same file.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ssvq.config import COUNTERS, HEADER_MAGIC, AccelConfig, log2

RDL = Path(__file__).resolve().with_name("regs.rdl")
ADDR_BITS = 8
DATA_BITS = 32
ID_MAGIC = 0x53535651              # "SSVQ"
REGMAP_VERSION = 1
ARCH_VERSION = 2
# STATUS.cause codes (hw/regs.rdl says the same)
CAUSES = {"none": 0, "magic": 1, "version": 2, "mode": 3, "bits": 4, "k": 5, "d": 6, "m": 7,
          "coef_bits": 8, "rows": 9, "cols": 10, "tlast_early": 11, "tlast_missing": 12}
COUNTER_REGS = {c: f"CNT_{c.upper()}" for c in COUNTERS}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    lsb: int
    width: int
    sw: str                 # "r", "rw" or "w"
    woclr: bool
    hwset: bool
    singlepulse: bool
    reset: int


@dataclass(frozen=True)
class RegSpec:
    name: str
    addr: int
    fields: tuple


@lru_cache(maxsize=1)
def register_map() -> tuple[RegSpec, ...]:
    """hw/regs.rdl compiled: every register (name, byte address, fields)."""
    from systemrdl import RDLCompiler
    from systemrdl.rdltypes import OnWriteType

    rdlc = RDLCompiler()
    rdlc.compile_file(str(RDL))
    root = rdlc.elaborate()
    regs = []
    for r in root.top.registers():
        fields = []
        for f in r.fields():
            sw = ("rw" if f.is_sw_readable else "w") if f.is_sw_writable else "r"
            fields.append(FieldSpec(
                f.inst_name, f.lsb, f.width, sw,
                f.get_property("onwrite") == OnWriteType.woclr,
                bool(f.get_property("hwset")), bool(f.get_property("singlepulse")),
                int(f.get_property("reset") or 0)))
        regs.append(RegSpec(r.inst_name, r.absolute_address, tuple(fields)))
    return tuple(regs)


def port_name(reg: str, field: str) -> str:
    return f"{reg}_{field}".lower()


def build_values(cfg: AccelConfig) -> dict[str, int]:
    """Values of the constant registers' fields for a build (port name -> value)."""
    v = {"id_magic": ID_MAGIC, "version_arch": ARCH_VERSION, "version_regmap": REGMAP_VERSION,
         "build0_mults": cfg.mults, "build0_bus": cfg.bus,
         "build1_kmax_log2": log2(cfg.kmax), "build1_m_max": cfg.m_max,
         "build1_coef_bits_max": cfg.coef_bits_max,
         "build1_modes": sum(1 << i for i, md in enumerate(("int", "vq", "ssvq"))
                             if md in cfg.modes),
         "build2_d_set": sum(1 << log2(d) for d in cfg.d_set),
         "build2_int_bits": sum(1 << (b - 1) for b in cfg.int_bits),
         "max_rows_max_rows": cfg.max_rows, "max_cols_max_cols": cfg.max_cols}
    assert HEADER_MAGIC == 0x325653 and ARCH_VERSION == 2
    return v


def axil_members(addr_bits: int = ADDR_BITS, prefix: str = "s_axil_") -> dict:
    """AXI4-Lite slave port members (flat, so the Verilog names are s_axil_awaddr...)."""
    return {f"{prefix}{k}": v for k, v in {
        "awaddr": In(addr_bits), "awvalid": In(1), "awready": Out(1),
        "wdata": In(DATA_BITS), "wstrb": In(DATA_BITS // 8), "wvalid": In(1),
        "wready": Out(1),
        "bresp": Out(2), "bvalid": Out(1), "bready": In(1),
        "araddr": In(addr_bits), "arvalid": In(1), "arready": Out(1),
        "rdata": Out(DATA_BITS), "rresp": Out(2), "rvalid": Out(1), "rready": In(1),
    }.items()}


class AxiLiteRegs(wiring.Component):
    def __init__(self, addr_bits: int = ADDR_BITS):
        self.addr_bits = addr_bits
        self.map = register_map()
        members = axil_members(addr_bits)
        members["clear"] = In(1)
        for r in self.map:
            for f in r.fields:
                n = port_name(r.name, f.name)
                members[n] = In(f.width) if f.sw == "r" else Out(f.width, init=f.reset)
                if f.hwset:
                    members[n + "_set"] = In(f.width)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        p = "s_axil_"
        g = lambda k: getattr(self, p + k)       # noqa: E731
        lo = log2(DATA_BITS // 8)
        # ---- write channel
        aw_q, w_q, bvalid = Signal(), Signal(), Signal()
        aw_addr = Signal(self.addr_bits)
        w_data, w_strb = Signal(DATA_BITS), Signal(DATA_BITS // 8)
        m.d.comb += [g("awready").eq(~aw_q & ~bvalid), g("wready").eq(~w_q & ~bvalid),
                     g("bvalid").eq(bvalid), g("bresp").eq(0)]
        with m.If(g("awvalid") & g("awready")):
            m.d.sync += [aw_q.eq(1), aw_addr.eq(g("awaddr"))]
        with m.If(g("wvalid") & g("wready")):
            m.d.sync += [w_q.eq(1), w_data.eq(g("wdata")), w_strb.eq(g("wstrb"))]
        do_write = Signal()
        m.d.comb += do_write.eq(aw_q & w_q & ~bvalid)
        with m.If(do_write):
            m.d.sync += [bvalid.eq(1), aw_q.eq(0), w_q.eq(0)]
        with m.If(bvalid & g("bready")):
            m.d.sync += bvalid.eq(0)
        bit_en = Signal(DATA_BITS)               # byte strobes, per bit
        m.d.comb += bit_en.eq(Cat(*[w_strb[i // 8] for i in range(DATA_BITS)]))
        wr = w_data & bit_en
        for r in self.map:
            hit = do_write & (aw_addr[lo:] == r.addr >> lo)
            for f in r.fields:
                if f.sw == "r":
                    continue
                s = getattr(self, port_name(r.name, f.name))
                sl = slice(f.lsb, f.lsb + f.width)
                if f.singlepulse:
                    m.d.sync += s.eq(0)
                    with m.If(hit):
                        m.d.sync += s.eq(wr[sl])
                elif f.woclr:
                    clr = Mux(hit, wr[sl], 0)
                    st = (getattr(self, port_name(r.name, f.name) + "_set") if f.hwset
                          else 0)
                    m.d.sync += s.eq((s & ~clr) | st)       # a set wins over a clear
                    with m.If(self.clear):
                        m.d.sync += s.eq(f.reset)
                else:
                    with m.If(hit):
                        m.d.sync += s.eq((s & ~bit_en[sl]) | wr[sl])
        # ---- read channel
        rvalid, rdata = Signal(), Signal(DATA_BITS)
        m.d.comb += [g("arready").eq(~rvalid), g("rvalid").eq(rvalid), g("rdata").eq(rdata),
                     g("rresp").eq(0)]
        with m.If(g("arvalid") & g("arready")):
            m.d.sync += rvalid.eq(1)
            with m.Switch(g("araddr")[lo:]):
                for r in self.map:
                    with m.Case(r.addr >> lo):
                        word = Const(0, DATA_BITS)
                        parts = []
                        for f in r.fields:
                            if f.singlepulse:
                                continue
                            parts.append((f, getattr(self, port_name(r.name, f.name))))
                        val = 0
                        for f, s in parts:
                            val = val | (s.as_unsigned() << f.lsb)
                        m.d.sync += rdata.eq(val if parts else word)
                with m.Default():
                    m.d.sync += rdata.eq(0)
        with m.If(rvalid & g("rready")):
            m.d.sync += rvalid.eq(0)
        return m


def write_outputs(out_dir) -> list[Path]:
    """ssvq_regs.h (peakrdl-cheader) and regs.md (peakrdl-markdown) from hw/regs.rdl."""
    from peakrdl_cheader.exporter import CHeaderExporter
    from peakrdl_markdown import MarkdownExporter
    from systemrdl import RDLCompiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rdlc = RDLCompiler()
    rdlc.compile_file(str(RDL))
    root = rdlc.elaborate()
    h, md = out / "ssvq_regs.h", out / "regs.md"
    CHeaderExporter().export(root, str(h))
    MarkdownExporter().export(root.top, str(md))
    return [h, md]
