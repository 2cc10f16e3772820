"""`ssvq sim` refuses what the build cannot run: one line naming the file or
layer and the field, exit status 2, nothing simulated or written."""
import json

import numpy as np
import pytest

from ssvq.app.cli import main
from ssvq.config import AccelConfig
from ssvq.image import write_images
from tests.rtl_helpers import random_layer


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    layers = [random_layer(n, 5, 20, rng, n) for n in ("int4", "ssvq-k256-d8", "vq-k16-d4")]
    return write_images(tmp_path / "images", AccelConfig(max_rows=64, max_cols=64), layers)


def _sim(images, tmp_path, capsys, *extra):
    out = tmp_path / "out"
    rc = main(["sim", "--images", str(images), "--simulator", "icarus", "--out", str(out),
               *extra])
    err = capsys.readouterr().err.strip()
    assert not (out / "sim_summary.json").exists() and not list(out.rglob("result.json"))
    return rc, err


def _build(tmp_path, **kw):
    p = tmp_path / "build.json"
    p.write_text(json.dumps(kw))
    return str(p)


@pytest.mark.parametrize("build,needle", [
    (dict(modes=["vq", "ssvq"]), "mode 'int' is not built"),
    (dict(kmax=128), "k=256 is above kmax=128"),
    (dict(d_set=[2, 4]), "d=8 is not in this build's d_set [2, 4]"),
    (dict(int_bits=[8]), "int4: bits 4 not built"),
])
def test_layer_the_build_lacks(images, tmp_path, capsys, build, needle):
    rc, err = _sim(images, tmp_path, capsys, "--build-config", _build(tmp_path, **build))
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err


def test_version_1_image_set(images, tmp_path, capsys):
    m = json.loads((images / "manifest.json").read_text())
    m["version"] = 1
    (images / "manifest.json").write_text(json.dumps(m))
    rc, err = _sim(images, tmp_path, capsys)
    assert rc == 2 and "version: expected 2, found 1" in err and "manifest.json" in err, err


def test_bad_build_config_field(images, tmp_path, capsys):
    rc, err = _sim(images, tmp_path, capsys, "--build-config", _build(tmp_path, kmax=300))
    assert rc == 2 and "kmax: expected a power of two, found 300" in err, err


def test_verilog_cache_key_is_the_loaded_code_not_the_files_now(monkeypatch):
    """sim.runner keys generated Verilog by hw.SOURCE_DIGEST, taken when hw was
    imported: a process whose modules predate an edit must not file its design
    under the digest of the edited files (a long quality run did, and a later
    simulation reused Verilog one pipeline stage short)."""
    import hashlib

    import hw
    from sim import runner
    assert hw.SOURCE_DIGEST == hw._digest()          # nothing edited during the tests
    before = runner._source_digest()
    monkeypatch.setattr(hw, "SOURCE_DIGEST", hashlib.sha256(b"older code").hexdigest())
    assert runner._source_digest() != before
