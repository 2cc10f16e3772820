"""Property-based tests (hypothesis) of the image reader that `ssvq sim`
(sim.runner.prepare_images) and `ssvq report` (sim.report.build_summary) share.

A small valid image set is written once; every example copies it into a fresh
temporary folder and damages one file: random byte edits, a truncation, or a
mutation of the parsed manifest. Optionally the damage is "resealed" the way a
careful forger would do it (file sizes and SHA-256 digests, stream.hex rewritten
from stream.bin, the beat count and manifest_sha256 recomputed), so that the
checks behind the digests (stream decoding, arrays.npz, manifest fields) are
reached too. Then:

* either both readers refuse the copy with an SsvqError whose message is one
  line and names the image (its path) and the file of it at fault -- never any
  other exception;
* or a reader accepts it, and then every layer it decodes must equal, array for
  array, the layer originally written in the folder it was read from, with the
  same int8 outputs (anything else is a silent corruption). Without resealing,
  acceptance is only allowed when the bytes of the layer files are unchanged and
  the manifest's canonical content is the same.

A subset also runs the real CLI in-process (`ssvq report` and `ssvq sim` with
`--out`): exit status 2, one line on stderr, and the `--out` folder not created
(or, when it existed, left byte for byte as it was).

The examples are derandomized (reproducible in CI) and bounded so that the
file runs in well under a minute on one core.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.report import build_summary
from sim.runner import prepare_images
from ssvq.app.cli import main
from ssvq.config import AccelConfig
from ssvq.errors import SsvqError
from ssvq.image import ARRAYS, beats_to_hex, manifest_digest, write_images
from ssvq.reference import outputs
from tests.rtl_helpers import random_layer

CFG = AccelConfig(kmax=16, d_set=(4, 8), mults=8, max_rows=64, max_cols=64)
LAYER_FILES = ("stream.bin", "stream.hex", "arrays.npz")
BPB = CFG.bus // 8


def _n(examples: int) -> int:
    """Examples per property; SSVQ_FUZZ_SCALE (default 1) multiplies them for a
    longer exploratory run; SSVQ_FUZZ_RANDOM=1 draws fresh examples instead of the
    fixed (derandomized) ones CI runs."""
    return max(1, int(examples * float(os.environ.get("SSVQ_FUZZ_SCALE", "1"))))


FUZZ = settings(deadline=None, derandomize=not os.environ.get("SSVQ_FUZZ_RANDOM"),
                database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------- the base set
def _layers():
    rng = np.random.default_rng(7)
    fc1 = random_layer("ssvq-k16-d4", 5, 11, rng, "fc1")
    fc1.scales = {"w": np.linspace(0.5, 1.5, 5).astype(np.float32), "cb": np.float32(0.25)}
    fc2 = random_layer("int3", 3, 5, rng, "fc2")
    fc3 = random_layer("vq-k16-d8-m2-c4", 4, 9, rng, "fc3")
    # a chained pair: low.B (2 x 9) then low.A (6 x 2) on low.B's int8 outputs
    b = random_layer("int4", 2, 9, rng, "low#B")
    a = random_layer("int2", 6, 2, rng, "low#A")
    a.act = outputs(b).astype(np.int8)
    a.input_from = "low#B"
    return [fc1, fc2, fc3, b, a]


class Base(tuple):
    """(root, {dir: (LayerImage as decoded, outputs)}, {relative path: bytes},
    manifest) of the valid set; a short repr for hypothesis' failure reports."""
    def __repr__(self):
        return f"Base({self[0]})"


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    root = write_images(tmp_path_factory.mktemp("fuzz") / "img", CFG, _layers(),
                        meta={"note": "fuzz base"})
    imgs, _, prepared = prepare_images(root)
    by_dir = {e["dir"]: (layer, y) for e, layer, _, y, _ in prepared}
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return Base((root, by_dir, files, json.loads((root / "manifest.json").read_text())))


def _rel_files(manifest):
    return ["manifest.json"] + [f"{e['dir']}/{fn}" for e in manifest["layers"]
                                for fn in LAYER_FILES]


# ------------------------------------------------------------------ resealing
def _reseal(root: Path, sync_hex: bool):
    """What a forger does after editing: stream.hex rewritten from stream.bin (if
    `sync_hex` and stream.bin is whole beats), the beat count, every size and digest
    and manifest_sha256 recomputed. A manifest that no longer parses is left alone."""
    mpath = root / "manifest.json"
    try:
        m = json.loads(mpath.read_bytes().decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return
    if not isinstance(m, dict):
        return
    for e in m.get("layers") if isinstance(m.get("layers"), list) else []:
        if not (isinstance(e, dict) and isinstance(e.get("dir"), str)
                and isinstance(e.get("files"), dict)):
            continue
        d = root / e["dir"]
        with contextlib.suppress(OSError, ValueError):
            raw = (d / "stream.bin").read_bytes()
            if sync_hex and len(raw) % BPB == 0:
                beats = np.frombuffer(raw, np.uint8).reshape(-1, BPB)
                (d / "stream.hex").write_text(beats_to_hex(beats))
                e["beats"] = len(beats)
        for fn in LAYER_FILES:
            with contextlib.suppress(OSError, ValueError):
                data = (d / fn).read_bytes()
                e["files"][fn] = {"sha256": hashlib.sha256(data).hexdigest(),
                                  "bytes": len(data)}
    m["manifest_sha256"] = manifest_digest(m)
    mpath.write_text(json.dumps(m, indent=1))


# ------------------------------------------------------------------- the oracle
IMAGE_FILES = ("manifest.json", "stream.bin", "stream.hex", "arrays.npz")


def _same_layer(a, b) -> str | None:
    """None if the decoded layers agree in everything the stream carries."""
    for f in ("config", "rows", "cols", "input_from"):
        if getattr(a, f) != getattr(b, f):
            return f"{f}: {getattr(a, f)!r} != {getattr(b, f)!r}"
    for k in ARRAYS:
        x, y = getattr(a, k), getattr(b, k)
        if (x is None) != (y is None):
            return f"{k}: present in one only"
        if x is not None and not (x.shape == y.shape and x.dtype == y.dtype
                                  and np.array_equal(x, y)):
            return f"{k}: different"
    return None


def _check_error(e: BaseException, root: Path):
    msg = str(e)
    assert isinstance(e, SsvqError), f"{type(e).__name__} instead of SsvqError: {msg[:300]}"
    assert "\n" not in msg and "\r" not in msg, f"message on several lines: {msg[:300]!r}"
    assert str(root) in msg, f"message does not name the image: {msg[:300]}"
    assert any(n in msg for n in IMAGE_FILES) or f"{root}/layers/" in msg, \
        f"message names no file of the image: {msg[:300]}"


def _check_accepted(decoded, base, strict: bool, root: Path):
    """decoded: [(dir, LayerImage, outputs or None)] a reader returned."""
    _, by_dir, files, man0 = base
    for d, layer, y in decoded:
        assert d in by_dir, f"accepted a layer from {d!r}, which held no layer"
        orig, y0 = by_dir[d]
        diff = _same_layer(layer, orig)
        assert diff is None, f"silent corruption of the layer in {d}: {diff}"
        if y is not None:
            assert np.array_equal(y, y0), f"silent corruption: outputs of {d} differ"
    if strict:      # nothing resealed: only the bytes of the layers' files as written
        for d, _, _ in decoded:
            for fn in LAYER_FILES:
                rel = f"{d}/{fn}"
                assert (root / rel).read_bytes() == files[rel], f"{rel} changed, accepted"
        m = json.loads((root / "manifest.json").read_bytes().decode("utf-8-sig"))
        assert manifest_digest(m) == man0["manifest_sha256"], "edited manifest accepted"


def _sim_reader(root):
    imgs, _, prepared = prepare_images(root)
    return [(e["dir"], layer, y) for e, layer, _, y, _ in prepared]


def _report_reader(root):
    s = build_summary(root)
    # build_summary decoded every layer with ImageSet.layer; decode again for the oracle
    from ssvq.image import read_images
    imgs = read_images(root)
    return [(imgs.entry(r["name"])["dir"], imgs.layer(r["name"]), None) for r in s["layers"]]


def _run_cli(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:         # argparse
            rc = e.code
    return rc, err.getvalue()


def _tree(p: Path):
    return sorted((str(x.relative_to(p)), x.read_bytes() if x.is_file() else None)
                  for x in p.rglob("*"))


def _check_cli(root: Path, work: Path, existing_out: bool):
    """The real commands on a copy both readers refused: exit 2, one stderr line
    naming the image, and no output left behind. Returns {command: that line}."""
    said = {}
    for cmd in ("report", "sim"):
        out = work / f"out-{cmd}"
        if existing_out:
            out.mkdir()
            (out / "keep.txt").write_text("old output\n")
        before = _tree(out) if existing_out else None
        extra = ["--simulator", "icarus", "--all"] if cmd == "sim" else []
        # never build or simulate: the images must be refused before that
        with mock.patch("sim.runner.simulate_images",
                        side_effect=AssertionError("ssvq sim went on to simulate")):
            rc, err = _run_cli([cmd, "--images", str(root), *extra, "--out", str(out)])
        lines = err.strip().splitlines()
        assert rc == 2, f"ssvq {cmd}: exit {rc}: {err[-500:]}"
        assert len(lines) == 1 and lines[0].startswith(f"ssvq {cmd}: error: "), err[-500:]
        assert str(root) in lines[0], lines[0]
        if existing_out:
            assert _tree(out) == before, f"ssvq {cmd} changed {out}"
        else:
            assert not out.exists(), f"ssvq {cmd} left {out} behind"
        stray = [q.name for q in work.iterdir() if q.name.startswith(f".{out.name}")]
        assert not stray, f"ssvq {cmd} left temporary folders {stray}"
        said[cmd] = lines[0]
    return said


def _verdict(root: Path, base, strict: bool, work: Path | None = None,
             existing_out: bool = False):
    """Runs both readers on the damaged copy and applies the oracle. Returns the
    outcome per reader ('ok' or the error class name), for statistics."""
    outcome = {}
    for name, reader in (("sim", _sim_reader), ("report", _report_reader)):
        try:
            decoded = reader(root)
        except Exception as e:              # noqa: BLE001 - the property under test
            _check_error(e, root)
            outcome[name] = type(e).__name__
            if os.environ.get("SSVQ_FUZZ_STATS"):
                import re
                why = re.sub(r"[0-9a-f]{64}|\d+", "#", str(e).replace(str(root), "<img>"))[:90]
                MESSAGES[why] = MESSAGES.get(why, 0) + 1
        else:
            _check_accepted(decoded, base, strict, root)
            outcome[name] = "ok"
    if work is not None and outcome["sim"] != "ok" and outcome["report"] != "ok":
        _check_cli(root, work, existing_out)
    return outcome


@contextlib.contextmanager
def _copy(base):
    with tempfile.TemporaryDirectory(prefix="ssvq-fuzz-") as t:
        work = Path(t)
        root = work / "img"
        shutil.copytree(base[0], root)
        yield work, root


# ----------------------------------------------------------------- strategies
# where: a fraction of the file, or ("zip", i, delta): delta bytes into the i-th zip
# header (local or central directory) of arrays.npz, where the fields that steer
# zipfile (flags, compression method, sizes, name lengths) are
WHERE = st.one_of(st.floats(0, 1, allow_nan=False),
                  st.tuples(st.just("zip"), st.integers(0, 40), st.integers(4, 30)))
EDIT = st.tuples(st.sampled_from(["flip", "set", "insert", "delete"]), WHERE,
                 st.integers(0, 255), st.integers(1, 8))


def _offset(b: bytes, where) -> int:
    if isinstance(where, tuple):
        heads = [i for i in range(len(b) - 3) if b[i:i + 2] == b"PK" and b[i + 2] in (1, 3)]
        if heads:
            return min(heads[where[1] % len(heads)] + where[2], len(b) - 1)
        where = where[2] / 30
    return min(int(where * len(b)), max(len(b) - 1, 0))


def _apply_edits(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, where, value, n in edits:
        at = _offset(b, where)
        if kind == "insert":
            b[at:at] = bytes([value]) * n
        elif not b:
            continue
        elif kind == "flip":
            b[at] ^= value or 0x01
        elif kind == "set":
            b[at] = value
        else:
            del b[at:at + n]
    return bytes(b)


def _which_file(base):
    return st.sampled_from(_rel_files(base[3]))


SEAL = st.sampled_from(["none", "digests", "digests+hex"])   # how far the forger goes
JSON_LEAF = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2, 63, 64, 65, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["", "..", "/etc", "x" * 300, "layers/000_fc1",
                                          "a\x00b", "ssvq-image", "int8", "fc1", "low#B"]))
JSON_VALUE = st.recursive(JSON_LEAF, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=8)


def _paths(node, prefix=()):
    """Every path (tuple of keys / indices) into a JSON tree, the root excluded."""
    out = []
    items = (node.items() if isinstance(node, dict) else
             enumerate(node) if isinstance(node, list) else ())
    for k, v in items:
        out.append(prefix + (k,))
        out += _paths(v, prefix + (k,))
    return out


def _get(node, path):
    for k in path:
        node = node[k]
    return node


MANIFEST_OPS = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10**6), JSON_VALUE),
    st.tuples(st.just("drop"), st.integers(0, 10**6), st.none()),
    st.tuples(st.just("nest"), st.integers(0, 10**6), st.integers(1, 50)),
    st.tuples(st.just("add-key"), st.integers(0, 10**6),
              st.tuples(st.sampled_from(["input_from", "meta", "extra", "name", "dir"]),
                        JSON_VALUE)),
    st.tuples(st.just("swap-layers"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("dup-layer"), st.integers(0, 10**6), st.none()),
    st.tuples(st.just("drop-layer"), st.integers(0, 10**6), st.none()),
    st.tuples(st.just("version"), st.integers(0, 10**6),
              st.sampled_from([1, 3, 2.0, "2", True, None, [2], -2, 2**64])))


def _mutate_manifest(m, op):
    kind, pick, arg = op
    layers = m["layers"]
    if kind == "swap-layers":
        i, j = pick % len(layers), arg % len(layers)
        layers[i], layers[j] = layers[j], layers[i]
        return
    if kind == "dup-layer":
        layers.insert(pick % (len(layers) + 1), json.loads(json.dumps(layers[pick % len(layers)])))
        return
    if kind == "drop-layer":
        del layers[pick % len(layers)]
        return
    if kind == "version":
        m["version"] = arg
        return
    paths = _paths(m)
    path = paths[pick % len(paths)]
    parent, key = _get(m, path[:-1]), path[-1]
    if kind == "replace":
        parent[key] = arg
    elif kind == "drop":
        del parent[key]
    elif kind == "nest":
        v = parent[key]
        for _ in range(arg):
            v = [v]
        parent[key] = v
    elif kind == "add-key":
        target = _get(m, path) if isinstance(_get(m, path), dict) else parent
        if isinstance(target, dict):
            target[arg[0]] = arg[1]
        else:
            parent[key] = {arg[0]: arg[1]}


# ---------------------------------------------------------------- the properties
STATS: dict = {}
MESSAGES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _print_stats():
    """SSVQ_FUZZ_STATS=1 (with -s): how the examples ended, and the messages seen."""
    yield
    if os.environ.get("SSVQ_FUZZ_STATS"):
        for k, v in sorted(STATS.items()):
            print(v, *k)
        for k, v in sorted(MESSAGES.items(), key=lambda kv: -kv[1]):
            print(f"{v:5d} {k}")


def _count(kind, outcome):
    key = (kind, outcome["sim"], outcome["report"])
    STATS[key] = STATS.get(key, 0) + 1


@settings(FUZZ, max_examples=_n(200))
@given(data=st.data())
def test_random_byte_edits(base, data):
    rel = data.draw(_which_file(base), label="file")
    edits = data.draw(st.lists(EDIT, min_size=1, max_size=4), label="edits")
    seal = data.draw(SEAL, label="seal")
    cli = data.draw(st.sampled_from([None, "new", "existing"]), label="cli")
    with _copy(base) as (work, root):
        p = root / rel
        p.write_bytes(_apply_edits(p.read_bytes(), edits))
        if seal != "none":
            _reseal(root, sync_hex=seal == "digests+hex" and rel.endswith("stream.bin"))
        outcome = _verdict(root, base, strict=seal == "none",
                           work=work if cli else None, existing_out=cli == "existing")
    _count("bytes", outcome)


@settings(FUZZ, max_examples=_n(80))
@given(data=st.data())
def test_truncations(base, data):
    rel = data.draw(_which_file(base), label="file")
    size = len(base[2][rel])
    n = data.draw(st.one_of(st.just(0), st.integers(0, max(size - 1, 0))), label="length")
    seal = data.draw(SEAL, label="seal")
    cli = data.draw(st.sampled_from([None, "new", "existing"]), label="cli")
    with _copy(base) as (work, root):
        p = root / rel
        p.write_bytes(p.read_bytes()[:n])
        if seal != "none":
            _reseal(root, sync_hex=seal == "digests+hex" and rel.endswith("stream.bin"))
        outcome = _verdict(root, base, strict=seal == "none",
                           work=work if cli else None, existing_out=cli == "existing")
    _count("truncate", outcome)


@settings(FUZZ, max_examples=_n(250))
@given(data=st.data())
def test_manifest_mutations(base, data):
    ops = data.draw(st.lists(MANIFEST_OPS, min_size=1, max_size=3), label="ops")
    reseal = data.draw(st.booleans(), label="reseal manifest_sha256")
    indent = data.draw(st.sampled_from([None, 0, 1, 4]), label="indent")
    cli = data.draw(st.sampled_from([None, None, "new", "existing"]), label="cli")
    with _copy(base) as (work, root):
        m = json.loads((root / "manifest.json").read_text())
        for op in ops:
            if isinstance(m, dict) and isinstance(m.get("layers"), list) and m["layers"]:
                _mutate_manifest(m, op)
        if reseal and isinstance(m, dict):
            m["manifest_sha256"] = manifest_digest(m)
        (root / "manifest.json").write_text(json.dumps(m, indent=indent))
        outcome = _verdict(root, base, strict=not reseal,
                           work=work if cli else None, existing_out=cli == "existing")
    _count("manifest", outcome)


@settings(FUZZ, max_examples=_n(100))
@given(data=st.data())
def test_resealed_bit_flip_in_a_stream_is_always_refused(base, data):
    """The stream encoding has no free bit: every header field is checked against
    the manifest or a rule, reserved and padding bits must be zero, and every other
    bit is a value that arrays.npz repeats. So one flipped bit of stream.bin, even
    with stream.hex, the beat count, every digest and manifest_sha256 made to agree
    (a careful forger), is refused -- never accepted."""
    d = data.draw(st.sampled_from(sorted(base[1])), label="layer dir")
    rel = f"{d}/stream.bin"
    bit = data.draw(st.integers(0, 8 * len(base[2][rel]) - 1), label="bit")
    with _copy(base) as (work, root):
        p = root / rel
        raw = bytearray(p.read_bytes())
        raw[bit // 8] ^= 1 << (bit % 8)
        p.write_bytes(bytes(raw))
        _reseal(root, sync_hex=True)
        outcome = _verdict(root, base, strict=False)
    assert outcome["sim"] != "ok" and outcome["report"] != "ok", f"bit {bit} of {rel} accepted"
    _count("stream-bit", outcome)


def test_base_set_is_accepted_by_both_readers(base):
    """The oracle itself: the untouched copy is accepted, whitespace and a BOM in
    the manifest are harmless, and a one-bit flip is refused (so the properties
    above can fail)."""
    with _copy(base) as (work, root):
        assert _verdict(root, base, strict=True) == {"sim": "ok", "report": "ok"}
        p = root / "manifest.json"
        m = json.loads(p.read_text())
        p.write_bytes(b"\xef\xbb\xbf" + json.dumps(m, indent=7).encode() + b"\n\n")
        assert _verdict(root, base, strict=True) == {"sim": "ok", "report": "ok"}
        q = root / "layers/000_fc1/stream.bin"
        q.write_bytes(_apply_edits(q.read_bytes(), [("flip", 0.5, 0x10, 1)]))
        assert _verdict(root, base, strict=True, work=work) == {"sim": "ImageError",
                                                                "report": "ImageError"}
    # and the oracle catches a silent corruption: a different layer in the same folder
    _, by_dir, _, _ = base
    d0, d1 = "layers/000_fc1", "layers/001_fc2"
    with pytest.raises(AssertionError, match="silent corruption"):
        _check_accepted([(d0, by_dir[d1][0], None)], base, strict=False, root=Path("."))


# ------------------------------------------------- regressions the fuzzing found
# Each of these raised something other than SsvqError (a traceback from the CLI)
# or accepted a wrong file before the fix; they are kept as plain examples.
def _members(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _zip_header_edit(path, local_offset, central_offset, value=None, mask=0):
    """Sets (or ORs `mask` into) one byte of every local and central zip header."""
    b = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        i = b.find(sig)
        while i >= 0:
            b[i + off] = value if value is not None else b[i + off] | mask
            i = b.find(sig, i + 4)
    path.write_bytes(bytes(b))


def _npz_case(kind):
    def edit(root):
        p = root / "layers/000_fc1/arrays.npz"
        if kind == "unknown-compression":        # found by test_random_byte_edits
            _zip_header_edit(p, 8, 10, value=99)
        elif kind == "encrypted-member":
            _zip_header_edit(p, 6, 8, mask=0x01)
        elif kind == "damaged-deflate":
            arrays = _members(p)
            np.savez_compressed(p, **arrays)
            b = bytearray(p.read_bytes())
            first = b.find(b"PK\x03\x04")
            start = first + 30 + int.from_bytes(b[first + 26:first + 28], "little") \
                + int.from_bytes(b[first + 28:first + 30], "little")
            b[start:start + 4] = b"\xff\xff\xff\xff"          # the deflate stream itself
            p.write_bytes(bytes(b))
        elif kind in ("member-not-npy", "extra-text-member"):
            import zipfile
            arrays = _members(p)
            with zipfile.ZipFile(p, "w") as zf:
                for k, v in arrays.items():
                    buf = io.BytesIO()
                    np.save(buf, v)
                    zf.writestr(f"{k}.npy", b"not an array" if (
                        kind == "member-not-npy" and k == "bias") else buf.getvalue())
                if kind == "extra-text-member":
                    zf.writestr("notes.txt", b"hello")
        elif kind == "uint64-wraps":
            arrays = _members(p)
            act = arrays["act"].astype(np.int64)
            assert (act < 0).any()
            arrays["act"] = act.astype(np.uint64)        # -5 -> 2**64 - 5
            np.savez(p, **arrays)
        _reseal(root, sync_hex=False)
    return edit


NPZ_CASES = [
    ("unknown-compression", r"arrays\.npz: expected a NumPy \.npz of plain arrays, found "
                            r"NotImplementedError: That compression method is not supported"),
    ("encrypted-member", r"arrays\.npz: expected a NumPy \.npz of plain arrays, found "
                         r"RuntimeError: File 'bias\.npy' is encrypted"),
    ("damaged-deflate", r"arrays\.npz: expected a NumPy \.npz of plain arrays, found \w+"),
    ("member-not-npy", r"arrays\.npz: bias: expected a \.npy array, found a member of 12 "
                       r"bytes that is not one"),
    ("extra-text-member", r"arrays\.npz: notes\.txt: expected a \.npy array"),
    ("uint64-wraps", r"arrays\.npz: act: expected the stream's values \(\(11,\)\), "
                     r"found uint64 \(11,\)"),
]


def _manifest_case(kind):
    def edit(root):
        p = root / "manifest.json"
        m = json.loads(p.read_text())
        if kind == "dir-too-long":
            m["layers"][0]["dir"] = "x" * 300
        elif kind == "nan-in-layer-meta":
            m["layers"][0]["meta"] = {"rel_weight_error": float("nan")}
        m["manifest_sha256"] = manifest_digest(m)
        p.write_text(json.dumps(m))
    return edit


def _write_deep_meta(root, n: int, where: str):
    """Puts n nested arrays into a meta field and reseals manifest_sha256, writing
    the JSON text by hand (json.dumps itself may not manage such depth here)."""
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    if where == "layer":
        m["layers"][0]["meta"] = {"x": "@DEEP@"}
    else:
        m["meta"] = "@DEEP@"
    deep = "[" * n + "0" + "]" * n
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).replace('"@DEEP@"', deep)
    m["manifest_sha256"] = hashlib.sha256(canon.encode()).hexdigest()
    p.write_text(json.dumps(m).replace('"@DEEP@"', deep))


def _parse_limit() -> int:
    """About the deepest nesting json.loads parses at this point of the stack."""
    lo, hi = 1, 5000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            json.loads("[" * mid + "]" * mid)
            lo = mid
        except RecursionError:
            hi = mid - 1
    return lo


MANIFEST_CASES = [
    # Path.is_file() raised OSError (ENAMETOOLONG) out of ImageSet.beats
    ("dir-too-long", "both", r"/x{300}/stream\.bin: expected a readable file listed in "
                             r"manifest, found an error \(File name too long\)"),
    # summary.json is written with allow_nan=False: ValueError from json.dumps
    ("nan-in-layer-meta", "report", r"manifest\.json: layers\[0\]\.meta: expected an object "
                                    r"of standard JSON values, found NaN or Infinity"),
]


@pytest.mark.parametrize("kind,match", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_npz_regressions(base, kind, match):
    with _copy(base) as (work, root):
        _npz_case(kind)(root)
        for reader in (_sim_reader, _report_reader):
            with pytest.raises(SsvqError, match=match) as e:
                reader(root)
            _check_error(e.value, root)
        _check_cli(root, work, existing_out=True)


@pytest.mark.parametrize("kind,who,match", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_manifest_regressions(base, kind, who, match):
    with _copy(base) as (work, root):
        _manifest_case(kind)(root)
        readers = [_report_reader] + ([_sim_reader] if who == "both" else [])
        for reader in readers:
            with pytest.raises(SsvqError, match=match) as e:
                reader(root)
            _check_error(e.value, root)
        if who == "both":
            _check_cli(root, work, existing_out=False)
        else:               # the sim reader does not write meta anywhere: accepted as is
            _check_accepted(_sim_reader(root), base, strict=False, root=root)


@pytest.mark.parametrize("where", ["layer", "top"])
def test_deep_meta_that_only_just_parses(base, where):
    """Nesting json.loads could just parse used to raise RecursionError later, when
    manifest_digest (sim and report) or summary.json (report) dumped it again a few
    stack frames deeper. Every depth around the parser's limit is now one ImageError
    (load_json refuses more than MAX_JSON_DEPTH levels)."""
    top = _parse_limit()
    for n in list(range(top - 12, top + 3)) + [101, 150]:
        with _copy(base) as (work, root):
            _write_deep_meta(root, n, where)
            for reader in (_sim_reader, _report_reader):
                with pytest.raises(SsvqError, match=r"manifest\.json: expected JSON of "
                                                    r"ordinary depth, found nesting too deep"):
                    reader(root)
    with _copy(base) as (work, root):       # and 99 levels inside meta are harmless
        _write_deep_meta(root, 99 - (where == "layer") * 3, where)
        _check_accepted(_sim_reader(root), base, strict=False, root=root)
        _check_accepted(_report_reader(root), base, strict=False, root=root)


def test_json_depth_limit_is_exact(tmp_path):
    """100 levels of arrays and objects are read; 101 are refused (load_json)."""
    from ssvq.errors import UserError
    from ssvq.files import MAX_JSON_DEPTH, load_json
    assert MAX_JSON_DEPTH == 100
    p = tmp_path / "x.json"
    p.write_text("[" * 50 + '{"a": ' * 50 + "1" + "}" * 50 + "]" * 50)
    assert load_json(p, UserError) is not None
    p.write_text("[" * 101 + "]" * 101)
    with pytest.raises(UserError, match="x.json: expected JSON of ordinary depth"):
        load_json(p, UserError)
    p.write_text('{"a": [1, 2]}')
    assert load_json(p, UserError) == {"a": [1, 2]}


def test_unreadable_images_path_is_one_line(tmp_path, capsys):
    """An --images path the file system refuses (too long a name): exit 2, one line."""
    bad = tmp_path / ("y" * 300)
    for cmd in ("report", "sim"):
        rc, err = _run_cli([cmd, "--images", str(bad), "--out", str(tmp_path / "o")])
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "manifest.json: expected a manifest, found an unreadable file" in err, err
        assert not (tmp_path / "o").exists()


# ------------------------------------------ the bad-input classes, by CLI
def _damage(how):
    def edit(p: Path):
        if how == "flipped":
            b = bytearray(p.read_bytes())
            b[len(b) // 2] ^= 0x04
            p.write_bytes(bytes(b))
        elif how == "truncated":
            p.write_bytes(p.read_bytes()[:-3])
        elif how == "appended":
            p.write_bytes(p.read_bytes() + b"\n")
        elif how == "deleted":
            p.unlink()
        elif how == "replaced":             # same size, other contents
            p.write_bytes(bytes(len(p.read_bytes())))
    return edit


DAMAGE = {"flipped": "sha256: expected", "truncated": "size in bytes: expected",
          "appended": "size in bytes: expected", "deleted": "expected file listed in manifest",
          "replaced": "sha256: expected"}


@pytest.mark.parametrize("fn", LAYER_FILES)
@pytest.mark.parametrize("how", list(DAMAGE))
def test_report_and_sim_cli_refuse_damaged_layer_files(base, fn, how):
    """`ssvq report --images` (and `ssvq sim`) on a flipped, truncated, appended,
    deleted or replaced stream.bin / stream.hex / arrays.npz: exit 2, one line
    naming the file and the check, nothing written (--out absent or unchanged)."""
    for existing in (False, True):
        with _copy(base) as (work, root):
            rel = f"layers/002_fc3/{fn}"
            _damage(how)(root / rel)
            lines = _check_cli(root, work, existing_out=existing)
            for cmd, line in lines.items():
                assert f"{root}/{rel}: {DAMAGE[how]}" in line, (cmd, line)


def _sim_results(root: Path, sim: Path, tweak):
    from sim import golden
    from ssvq.config import LayerConfig
    m = json.loads((root / "manifest.json").read_text())
    for i, e in enumerate(m["layers"]):
        lc = LayerConfig.from_dict(e["config"])
        c = golden.timing(CFG, lc, e["rows"], e["cols"]).counters
        r = dict(name=e["name"], config=lc.name, mode=lc.mode, rows=e["rows"], cols=e["cols"],
                 passed=True, bit_exact=True, cycles_rtl=c["cycles"], cycles_model=c["cycles"],
                 counters_rtl=dict(c), counters_model=dict(c), stall_prob=0.0, error=None,
                 problems=[])
        d = sim / Path(e["dir"]).name
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(tweak(r) if i == 1 else r))


@pytest.mark.parametrize("tweak,needle", [
    (lambda r: dict(r, cycles_rtl=str(r["cycles_rtl"])),
     "cycles_rtl: expected a non-negative integer, found str '"),
    (lambda r: dict(r, counters_rtl=[1, 2, 3]),
     "counters_rtl: expected an object of integer counters ['"),
    (lambda r: dict(r, counters_rtl="cycles=5"),
     "counters_rtl: expected an object of integer counters ['"),
    (lambda r: dict(r, counters_rtl=7), "counters_rtl: expected an object of integer counters"),
], ids=["cycles-str", "counters-list", "counters-str", "counters-int"])
def test_report_cli_bad_sim_result(base, tweak, needle):
    """`ssvq report --sim` with a result.json whose cycles_rtl is a string or whose
    counters_rtl is not an object: exit 2, one line saying what was expected."""
    with _copy(base) as (work, root):
        sim = work / "sim"
        _sim_results(root, sim, tweak)
        out = work / "rep"
        rc, err = _run_cli(["report", "--images", str(root), "--sim", str(sim), "--out", str(out)])
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"ssvq report: error: {sim}/001_fc2/result.json: {needle}"), err
        assert not out.exists()


def _resealed(edit):
    def go(root):
        edit(root)
        _reseal(root, sync_hex=False)
    return go


def _npz_with(**changes):
    def edit(root):
        p = root / "layers/000_fc1/arrays.npz"
        arrays = {**_members(p), **changes}
        np.savez(p, **arrays)
    return edit


def _set_byte(rel, at, value):
    def edit(root):
        b = bytearray((root / rel).read_bytes())
        b[at] = value
        (root / rel).write_bytes(bytes(b))
    return edit


NPZ1 = "layers/000_fc1/arrays.npz"
CLI_CLASSES = [
    ("deep-manifest", lambda r: (r / "manifest.json").write_bytes(b"[" * 100000 + b"]" * 100000),
     "manifest.json: expected JSON of ordinary depth, found nesting too deep to parse"),
    ("hex-non-ascii", _resealed(_set_byte("layers/000_fc1/stream.hex", 3, 0xC3)),
     "layers/000_fc1/stream.hex: byte 3: expected ASCII hex digits, found byte 0xc3"),
    ("npz-not-zip", _resealed(lambda r: (r / NPZ1).write_bytes(b"not a zip at all")),
     f"{NPZ1}: expected a NumPy .npz of plain arrays, found ValueError"),   # read as a pickle
    ("npz-empty-file", _resealed(lambda r: (r / NPZ1).write_bytes(b"")),
     f"{NPZ1}: expected a NumPy .npz of plain arrays, found"),
    ("npz-truncated", _resealed(lambda r: (r / NPZ1).write_bytes((r / NPZ1).read_bytes()[:700])),
     f"{NPZ1}: expected a NumPy .npz of plain arrays, found BadZipFile"),
    ("npz-object-array", _resealed(_npz_with(bias=np.array([object()] * 5, dtype=object))),
     f"{NPZ1}: expected a NumPy .npz of plain arrays, found ValueError: Object arrays cannot "
     f"be loaded when allow_pickle=False"),
    ("npz-string-array", _resealed(_npz_with(codes=np.array(["a"] * 5))),
     f"{NPZ1}: codes: expected the stream's values ((5, 3, 1)), found <U1 (5,)"),
]


@pytest.mark.parametrize("edit,needle", [c[1:] for c in CLI_CLASSES],
                         ids=[c[0] for c in CLI_CLASSES])
def test_cli_bad_input_classes(base, edit, needle):
    """The issue's bad-input classes through the real `ssvq report` and `ssvq sim`:
    exit 2, one line with the file and the check, no output left behind."""
    with _copy(base) as (work, root):
        edit(root)
        for cmd, line in _check_cli(root, work, existing_out=False).items():
            assert f"{root}/{needle}" in line, (cmd, line)
