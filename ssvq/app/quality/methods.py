"""The training methods `ssvq quality --model digits --methods ...` runs, each
at a few digits-sized configurations, every trained row for the same
wall-clock budget (--row-seconds), so rows compare at equal training time.

A method entry: name -> list of (config label, spec factory, learning-rate
groups for compress.train.fit). Reference rows (vq, ssvq, int4) use the
existing QAT layers at the same budget.
"""
from __future__ import annotations

from compress.cosvq import CosVQ
from compress.diffq import DiffQ
from compress.dkm import DKM
from compress.lr2vq import LR2VQ
from compress.qsd import QSD
from compress.train import SSVQ, VQ, Uniform

# learning rates: the latents of cosvq and dkm are in units of the row scale
# (like SSVQ's sign latents), so they take a larger rate than the codebook
LATENT = {"latent_lr": 1e-2}
METHODS = {
    "cosvq": [("K=16 D=4 c2", lambda s: CosVQ(k=16, d=4, coef_bits=2, seed=s), LATENT),
              ("K=16 D=8 c4", lambda s: CosVQ(k=16, d=8, coef_bits=4, seed=s), LATENT),
              ("K=64 D=8 c4", lambda s: CosVQ(k=64, d=8, coef_bits=4, seed=s), LATENT)],
    "dkm": [("K=64 D=4", lambda s: DKM(k=64, d=4, seed=s), LATENT),
            ("K=16 D=4", lambda s: DKM(k=16, d=4, seed=s), LATENT),
            ("K=256 D=8", lambda s: DKM(k=256, d=8, seed=s), LATENT)],
    # size penalty per mean bit/weight; bit logits learn fast (DiffQ's own recipe
    # gives them a separate, larger rate)
    "diffq": [("penalty=0.003", lambda s: DiffQ(penalty=3e-3, seed=s), {"bits_lr": 5e-2}),
              ("penalty=0.01", lambda s: DiffQ(penalty=1e-2, seed=s), {"bits_lr": 5e-2}),
              ("penalty=0.03", lambda s: DiffQ(penalty=3e-2, seed=s), {"bits_lr": 5e-2})],
    # one codebook size, several ranks: the rank estimate against measurements
    "lr2vq": [(f"K=64 D=8 r={r}", (lambda r: lambda s: LR2VQ(k=64, d=8, rank=r, seed=s))(r), {})
              for r in (2, 4, 6, 8)],
    # B is integer after every projection: a step moves an entry only when it
    # crosses a rounding boundary, so its rate is large
    "qsd": [("K=8 D=8 m2 c2", lambda s: QSD(k=8, d=8, coef_bits=2, seed=s), {"latent_lr": 0.3}),
            ("K=16 D=8 m2 c4", lambda s: QSD(k=16, d=8, coef_bits=4, seed=s),
             {"latent_lr": 0.3})],
    "vq": [("K=64 D=4", lambda s: VQ(k=64, d=4, seed=s), {}),
           ("K=16 D=4", lambda s: VQ(k=16, d=4, seed=s), {})],
    "ssvq": [("K=8 D=4", lambda s: SSVQ(k=8, d=4, seed=s), {"latent_lr": 3e-2})],
    "int4": [("per-channel", lambda s: Uniform(4, seed=s), {})],
}


# searched per-layer configurations (compress.nas via ssvq.app.quality.nas): one row
# per cycle budget (--nas-budget), not a fixed list of configurations
SEARCHES = ("nas",)


def check_methods(names: list[str]) -> list[str]:
    from ssvq.errors import UserError
    unknown = [m for m in names if m not in METHODS and m not in SEARCHES]
    if unknown:
        raise UserError(f"--methods: unknown digits method(s) {unknown}; expected some of "
                        f"{list(METHODS) + list(SEARCHES)}")
    return names
