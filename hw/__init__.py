"""The accelerator's Amaranth components.

SOURCE_DIGEST: a digest of the sources the generated Verilog depends on (hw/*.py,
hw/*.v, ssvq/*.py), taken when this package is first imported, so it describes the
code this process runs even if the files change afterwards (sim.runner keys its
cache of generated Verilog by it: a long run must not file its old design under the
digest of newer files)."""
import hashlib as _hashlib
from pathlib import Path as _Path


def _digest() -> str:
    root = _Path(__file__).resolve().parents[1]
    h = _hashlib.sha256()
    for d in ("hw", "ssvq"):
        for f in sorted([*(root / d).glob("*.py"), *(root / d).glob("*.v")]):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


SOURCE_DIGEST = _digest()
