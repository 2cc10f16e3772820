"""Files for the simulator-side stimulus (sim/tb/memstream.v): a run's layer streams
end to end as one $readmemh file, the layer table, the per-beat coverage marks, and the
golden output beats and their cycles for the testbench's comparator.

    write_stimulus(cfg, layers, out_dir) -> {"in", "tab", "marks", "exp", "expcyc", "cov",
                                             "out", "outcyc", "out_start", "beats", "depth_log2"}
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sim.coverage import marks
from ssvq.config import AccelConfig, LayerConfig
from ssvq.errors import SimError
from ssvq.image import beats_to_hex, hex_to_beats
from ssvq.reference import output_beats

TB_TOP = "ssvq_memstream_tb"
TB_SOURCE = Path(__file__).resolve().parent / "tb" / "memstream.v"
LAYERS_LOG2 = 8
# Input memory sizes of the builds: 2**16 beats (tests, regressions: quick to start on
# Icarus) or 2**22 (32 MiB on Verilator: a whole MiniLM image set, int8 included), so
# that one build serves every run of a size class.
MIN_DEPTH_LOG2 = 16
BIG_DEPTH_LOG2 = 22


def load_beats(path: str, bus: int) -> np.ndarray:
    """A layer stream from stream.bin, stream.hex or a .npy of uint8 (beats, bus/8)."""
    p = Path(path)
    if p.suffix == ".hex":
        beats = hex_to_beats(p.read_text(), bus, str(p))
    elif p.suffix == ".bin":                     # stream.bin: raw beats, LSB first
        beats = np.frombuffer(p.read_bytes(), np.uint8)
    else:
        beats = np.load(p)
    return np.ascontiguousarray(beats, np.uint8).reshape(-1, bus // 8)


def beats_as_ints(beats: np.ndarray) -> list[int]:
    if beats.shape[1] == 8:
        return beats.view("<u8").reshape(-1).tolist()
    return [int.from_bytes(row.tobytes(), "little") for row in beats]


def depth_log2(total_beats: int) -> int:
    """Input memory size (log2 beats) of the build a run of `total_beats` needs."""
    need = math.ceil(math.log2(max(1, total_beats)))
    return MIN_DEPTH_LOG2 if need <= MIN_DEPTH_LOG2 else max(BIG_DEPTH_LOG2, need)


def write_stimulus(cfg: AccelConfig, layers: list[dict], out_dir) -> dict:
    """`layers`: the job's layer dicts (beats path, config name, rows, cols)."""
    if len(layers) >= 1 << LAYERS_LOG2:
        raise SimError(f"memstream run: at most {(1 << LAYERS_LOG2) - 1} layers, "
                       f"found {len(layers)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = out_start = 0
    tab, mk, starts = [], [], []
    exp, expcyc = [], []
    with open(out / "in.hex", "w") as f:
        for lay in layers:
            beats = load_beats(lay["beats"], cfg.bus)
            lc = LayerConfig.parse(lay["config"])
            m = marks(cfg, lc, int(lay["rows"]), int(lay["cols"]))
            if len(m) != len(beats):
                raise SimError(f"{lay['beats']}: expected {len(m)} beats for "
                               f"{lc.name} {lay['rows']}x{lay['cols']}, found {len(beats)}")
            f.write(beats_to_hex(beats))
            n_out = cfg.out_beats(int(lay["rows"]))
            tab.append(f"{out_start:08x}{n_out:08x}{len(beats):08x}{start:08x}\n")
            mk.append(m)
            starts.append(out_start)
            digits = cfg.bus // 4
            exp += [f"{w:0{digits}x}\n" for w in output_beats(np.load(lay["expected"]), cfg)]
            oc = lay.get("out_cycles") or [0] * n_out
            expcyc += [f"{c:08x}\n" for c in oc]
            start += len(beats)
            out_start += n_out
    (out / "tab.hex").write_text("".join(tab))
    allm = np.concatenate(mk) if mk else np.zeros(0, np.uint8)
    (out / "marks.hex").write_text("".join(f"{v:02x}\n" for v in allm.tolist()))
    (out / "exp.hex").write_text("".join(exp))
    (out / "expcyc.hex").write_text("".join(expcyc))
    for f in ("cov.hex", "out.hex", "outcyc.hex"):
        (out / f).unlink(missing_ok=True)
    return {"in": str(out / "in.hex"), "tab": str(out / "tab.hex"),
            "marks": str(out / "marks.hex"), "exp": str(out / "exp.hex"),
            "expcyc": str(out / "expcyc.hex"), "cov": str(out / "cov.hex"),
            "out": str(out / "out.hex"), "outcyc": str(out / "outcyc.hex"),
            "out_start": starts, "beats": start, "depth_log2": depth_log2(start)}
