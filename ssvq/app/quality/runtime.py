"""Console output and thread count of a quality run, and where it caches."""
from __future__ import annotations

import os
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[3]
CACHE_DIR = REPO_ROOT / ".cache"


def say(msg: str):
    print(msg, flush=True)


def set_threads() -> int:
    """SSVQ_THREADS (if set) as torch's thread count; returns the count in use."""
    n = os.environ.get("SSVQ_THREADS")
    if n:
        torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()
