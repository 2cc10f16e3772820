"""The one bit-exact reference for what the accelerator computes: the integer
weight matrix of a layer image, the requantization, the output beats.

Everything that needs the accelerator's arithmetic (golden model, compressor's
integer forward, quality evaluation) calls these; docs/FORMAT.md section
"Compute rule" states the same in prose.
"""
from __future__ import annotations

import numpy as np

from ssvq.config import OUT_BITS, AccelConfig
from ssvq.image import LayerImage


def weight_matrix(img: LayerImage) -> np.ndarray:
    """Integer weights the multipliers see, (rows, cols) int64.

    vq/ssvq: element j of vector v of row r is
        sum_i coef[r, v, i] * codebook[i*k + codes[r, v, i], j]   (coef = 1 without coefs)
    negated where the sign bit of that weight is set (ssvq)."""
    lc = img.config
    if lc.mode == "int":
        return np.asarray(img.weights, np.int64)
    cb = np.asarray(img.codebook, np.int64)
    codes = np.asarray(img.codes, np.int64)                              # rows, V, m
    idx = codes + np.arange(lc.m, dtype=np.int64) * lc.k
    cw = cb[idx]                                                         # rows, V, m, d
    if lc.coef_bits:
        cw = cw * np.asarray(img.coefs, np.int64)[..., None]
    w = cw.sum(axis=2).reshape(img.rows, -1)[:, : img.cols]
    if lc.mode == "ssvq":
        w = np.where(np.asarray(img.signs).astype(bool), -w, w)
    return w


def requantize(acc, bias, mult, shift) -> np.ndarray:
    """int8 = saturate(floor(((acc + bias) * mult + 2**(shift-1)) / 2**shift)), per row
    (acc may be (rows,) or (batch, rows))."""
    acc = np.asarray(acc, np.int64) + np.asarray(bias, np.int64)
    shift = np.asarray(shift, np.int64)
    y = (acc * np.asarray(mult, np.int64) + (np.int64(1) << (shift - 1))) >> shift
    return np.clip(y, -128, 127).astype(np.int8)


def accumulate(img: LayerImage, act=None) -> np.ndarray:
    """W @ act in exact integers; act (cols,) or (batch, cols) int8, default img.act."""
    a = np.asarray(img.act if act is None else act, np.int64)
    return a @ weight_matrix(img).T


def outputs(img: LayerImage, act=None) -> np.ndarray:
    """The layer's int8 outputs for `act` (default: the activation it carries)."""
    return requantize(accumulate(img, act), img.bias, img.mult, img.shift)


def output_beats(y: np.ndarray, cfg: AccelConfig) -> list[int]:
    """Output stream words: BUS/8 outputs per beat, row 0 in the low byte, the
    last beat padded with zero bytes."""
    per = cfg.bus // OUT_BITS
    b = np.zeros(cfg.out_beats(len(y)) * per, np.uint8)
    b[: len(y)] = np.asarray(y, np.int8).view(np.uint8)
    return [int.from_bytes(b[i:i + per].tobytes(), "little") for i in range(0, len(b), per)]
