"""The accelerator's columns of a quality row, from the row's exported images:

* int_mean_cosine (and int_min_cosine, int_pearson on MiniLM): the row's
  metric with every compressed Linear run through the accelerator's integer
  arithmetic end to end (compress.intlinear: int8 activations at the image's
  calibrated act_scale and act_zero, the integer MAC, the image's bias/mult/shift
  requantization, int8 outputs times out_scale, one per row; compress.calib's
  rule chose them). The experiment measures it
  with its own metric function on `integer_forward(...)`'s model.
* speedup_int8 / speedup_int4: whole-model cycles of the same layers as int8
  (int4) images over the row's cycles, every layer in its own configuration
  (mixed plans included), all on the default build AccelConfig() (sim.cost.
  compare: sim.golden.timing's cycle counter, the RTL's). A row whose images
  the default build cannot run (D = 16, K > 256, ...) is costed on the
  smallest build that runs them, widened by the int baselines, and the row's
  `speedup_build` says so.

Rows without images (fp32, faiss anchors, the diffq-fixed package) carry
None in all of them (`no_images`).
"""
from __future__ import annotations

import torch

from compress.intlinear import integer_model
from compress.run import accel_config_for
from sim.cost import compare
from ssvq.config import AccelConfig
from ssvq.errors import ConfigError

COLUMNS = ("int_mean_cosine", "speedup_int8", "speedup_int4")


def no_images() -> dict:
    return dict.fromkeys(COLUMNS)


def speedups(imgs) -> dict:
    """speedup_int8, speedup_int4 and the cycles behind them, accel_cycles
    (the row) and accel_cycles_int8 / _int4 (module doc)."""
    layers = [(im.name, im.config, im.rows, im.cols) for im in imgs]
    # a low-rank pair's factors are charged against the one layer they replace
    pairs: dict[str, list] = {}
    for im in imgs:
        if "#" in im.name:
            pairs.setdefault(im.name.partition("#")[0], []).append(im)
    originals = {}
    for name, group in pairs.items():
        first = next(im for im in group if im.input_from is None)
        last = next(im for im in group if im.name not in {g.input_from for g in group})
        originals.update({im.name: (name, last.rows, first.cols) for im in group})
    out = {}
    try:
        cmp = compare(AccelConfig(), layers, originals=originals or None)
    except ConfigError:
        cmp = compare(accel_config_for(layers), layers, originals=originals or None)
        out["speedup_build"] = cmp.build.to_dict()
    out.update(speedup_int8=cmp.speedup["int8"], speedup_int4=cmp.speedup["int4"],
               accel_cycles=cmp.cost.cycles, accel_cycles_int8=cmp.base["int8"].cycles,
               accel_cycles_int4=cmp.base["int4"].cycles)
    return out


def integer_forward(float_model: torch.nn.Module, imgs) -> torch.nn.Module:
    """float_model (a QuantizedModel's to_float(), consumed) with every image's
    layer on the integer path, in eval mode: to_float() copies the wrapper's
    mode, and QuantizedModel.capture leaves a fresh wrapper in train mode
    (dropout on)."""
    return integer_model(float_model, imgs, inplace=True).eval()


def mean_cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over rows of cosine(out row, ref row)."""
    return float(torch.nn.functional.cosine_similarity(out.double(), ref.double(), dim=1).mean())
