"""A layer's weights as D-vectors along the input dimension and back, the
layout every codebook image uses (columns zero-padded to a multiple of D)."""
from __future__ import annotations

import torch


def to_vectors(w: torch.Tensor, d: int) -> torch.Tensor:
    """(rows, cols) -> (rows * V, d), V = ceil(cols / d), padding zeros."""
    rows, cols = w.shape
    v = -(-cols // d)
    if v * d != cols:
        w = torch.nn.functional.pad(w, (0, v * d - cols))
    return w.reshape(rows * v, d)


def from_vectors(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(rows * V, d) -> (rows, cols), the padding dropped."""
    return x.reshape(rows, -1)[:, :cols]
