"""Bit-exact reference for the accelerator's datapath and its timing.

`outputs` works from a decoded image only, the way the hardware does; the
compressor's own integer forward (compress.quantize) is a separate computation
that tests hold equal to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.image import LayerImage
from hw.config import COUNTERS, ISSUE_TO_BEAT, OUT_BITS, AccelConfig  # noqa: F401 (COUNTERS re-exported)



def requantize(acc: np.ndarray, bias, mult, shift) -> np.ndarray:
    """int8 = saturate(floor(((acc + bias) * mult + 2**(shift-1)) / 2**shift))."""
    acc = np.asarray(acc, np.int64) + np.asarray(bias, np.int64)
    shift = np.asarray(shift, np.int64)
    y = (acc * np.asarray(mult, np.int64) + (np.int64(1) << (shift - 1))) >> shift
    return np.clip(y, -128, 127).astype(np.int8)


def accumulate(img: LayerImage) -> np.ndarray:
    return img.weight_matrix() @ img.act.astype(np.int64)


def outputs(img: LayerImage) -> np.ndarray:
    return requantize(accumulate(img), img.bias, img.mult, img.shift)


def output_beats(y: np.ndarray, cfg: AccelConfig) -> list[int]:
    """Output stream words: BUS/8 outputs per beat, row 0 in the low byte, the
    last beat padded with zero bytes."""
    per = cfg.bus // OUT_BITS
    b = np.zeros(cfg.out_beats(len(y)) * per, np.uint8)
    b[: len(y)] = y.view(np.uint8)
    return [int.from_bytes(b[i:i + per].tobytes(), "little") for i in range(0, len(b), per)]


@dataclass
class Timing:
    out_cycles: list[int]        # cycle (header beat = cycle 0) each output beat is accepted
    counters: dict[str, int]


def timing(cfg: AccelConfig, mode: str, rows: int, cols: int) -> Timing:
    """Cycle of every output beat and final counters with no stalls on either side.

    Load sections take one beat per cycle after the header. Weight block i is
    handed to the compute register at x_i = s + B + i*max(B, N), its groups issue
    on the N following cycles, and a row's output is in a valid beat
    ISSUE_TO_BEAT cycles after its last group issues.
    """
    geo = cfg.mode(mode)
    g = cfg.groups_per_row(cols)
    nb = cfg.weight_blocks(mode, rows, cols)
    loads = cfg.codebook_beats(mode) + cfg.param_beats(rows) + cfg.act_beats(cols)
    s = 1 + loads
    b, n = geo.beats, geo.groups
    last_group = np.arange(rows, dtype=np.int64) * g + g - 1
    issue = s + b + (last_group // n) * max(b, n) + 1 + last_group % n
    per = cfg.bus // OUT_BITS
    last_row_in_beat = np.minimum(np.arange(cfg.out_beats(rows)) * per + per - 1, rows - 1)
    out_cycles = (issue[last_row_in_beat] + ISSUE_TO_BEAT).tolist()
    counters = {
        "cycles": out_cycles[-1] + 1, "stall": 0, "header": 1,
        "codebook": cfg.codebook_beats(mode), "params": cfg.param_beats(rows),
        "acts": cfg.act_beats(cols),
        "codes": nb * geo.primary_beats if mode != "int8" else 0,
        "signs": nb * geo.sign_beats,
        "weights": nb * geo.primary_beats if mode == "int8" else 0,
        "out": cfg.out_beats(rows),
    }
    return Timing(out_cycles, counters)
