"""Random layer images for the hardware tests (Amaranth simulator and cocotb)."""
import numpy as np

from ssvq.config import LayerConfig
from ssvq.image import LayerImage
from ssvq.reference import accumulate


def random_layer(lc: LayerConfig | str, rows, cols, rng, name="layer"):
    lc = LayerConfig.parse(lc) if isinstance(lc, str) else lc
    img = LayerImage(
        name=name, config=lc, rows=rows, cols=cols,
        bias=rng.integers(-20000, 20000, rows).astype(np.int32),
        mult=rng.integers(1 << 14, 1 << 16, rows).astype(np.uint16),
        shift=rng.integers(12, 24, rows).astype(np.uint8),
        act=rng.integers(-128, 128, cols).astype(np.int8))
    if lc.mode == "int":
        b = lc.bits
        img.weights = (rng.choice([-1, 1], (rows, cols)) if b == 1 else
                       rng.integers(-(1 << (b - 1)), 1 << (b - 1), (rows, cols))).astype(np.int8)
    else:
        v = -(-cols // lc.d)
        img.codes = rng.integers(0, lc.k, (rows, v, lc.m)).astype(np.int32)
        if lc.coef_bits:
            h = 1 << (lc.coef_bits - 1)
            img.coefs = rng.integers(-h, h, (rows, v, lc.m)).astype(np.int8)
        if lc.mode == "ssvq":
            img.codebook = rng.integers(0, 256, (lc.m * lc.k, lc.d)).astype(np.uint8)
            img.signs = rng.integers(0, 2, (rows, cols)).astype(np.uint8)
        else:
            img.codebook = rng.integers(-128, 128, (lc.m * lc.k, lc.d)).astype(np.int8)
    # Pick each row's shift so outputs spread over the int8 range rather than saturate;
    # every fourth row is pushed 2 bits hotter to exercise saturation too.
    acc = np.abs(accumulate(img) + img.bias) + 1
    want = np.log2(acc.astype(np.float64) * img.mult / 100.0)
    shift = np.clip(np.ceil(want), 1, 63).astype(np.int64)
    shift[::4] = np.clip(shift[::4] - 2, 1, 63)
    img.shift = shift.astype(np.uint8)
    return img
