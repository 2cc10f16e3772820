"""Random layer images for hardware tests (shared by the Amaranth and cocotb tests)."""
import numpy as np

from compress.image import LayerImage


def random_layer(cfg, mode, rows, cols, rng, name="layer"):
    v = -(-cols // cfg.d)
    img = LayerImage(
        name=name, mode=mode, rows=rows, cols=cols,
        bias=rng.integers(-20000, 20000, rows).astype(np.int32),
        mult=rng.integers(1 << 14, 1 << 16, rows).astype(np.uint16),
        shift=rng.integers(12, 24, rows).astype(np.uint8),
        act=rng.integers(-128, 128, cols).astype(np.int8))
    if mode == "int8":
        img.weights = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    else:
        img.codes = rng.integers(0, cfg.k, (rows, v)).astype(np.int32)
        if mode == "ssvq":
            img.codebook = rng.integers(0, 256, (cfg.k, cfg.d)).astype(np.uint8)
            img.signs = rng.integers(0, 2, (rows, cols)).astype(np.uint8)
        else:
            img.codebook = rng.integers(-128, 128, (cfg.k, cfg.d)).astype(np.int8)
    # Pick each row's shift so outputs spread over the int8 range rather than saturate;
    # every fourth row is pushed 2 bits hotter to exercise saturation too.
    acc = np.abs(img.weight_matrix() @ img.act.astype(np.int64) + img.bias) + 1
    want = np.log2(acc.astype(np.float64) * img.mult / 100.0)
    shift = np.clip(np.ceil(want), 1, 63).astype(np.int64)
    shift[::4] = np.clip(shift[::4] - 2, 1, 63)
    img.shift = shift.astype(np.uint8)
    return img
