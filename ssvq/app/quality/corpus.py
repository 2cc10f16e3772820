"""An offline English sentence corpus for MiniLM distillation, split by source
document into train and held-out sentences."""
from __future__ import annotations

import ast
import json
import os
import re
import sysconfig
import time
import zlib
from pathlib import Path

from ssvq.app.quality.runtime import CACHE_DIR, say


# ================================================================== MiniLM
CORPUS_VERSION = 1
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_BAD = re.compile(r"[>{}\[\]=_\\|#@$<`*~^]|::|\.\.\.|https?:|\d\.\d|\(\)")


def _good_sentence(s: str) -> bool:
    w = s.split()
    if not 6 <= len(w) <= 40 or not s[0].isupper() or s[-1] not in ".!?":
        return False
    if _BAD.search(s):
        return False
    return sum(c.isalpha() or c == " " for c in s) / len(s) > 0.9


def _sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        out += [s for s in _SPLIT.split(para) if _good_sentence(s)]
    return out


def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return ""
    ds = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            d = ast.get_docstring(node)
            if d:
                ds.append(d)
    return "\n\n".join(ds)


def build_corpus(progress=say) -> dict:
    """English sentences available offline, split by source document (so no
    document contributes to both sides):

    * train / test_tech: prose sentences from the Python reference manual
      (pydoc_data.topics) and the docstrings of the standard library, numpy,
      scikit-learn and matplotlib (test folders excluded); one document in 8
      (by a hash of its name) is held out.
    * test_general: compress/data/sentences.txt, 64 everyday sentences, never
      trained on.
    Cached in .cache/minilm_corpus.json."""
    cache = CACHE_DIR / "minilm_corpus.json"
    if cache.is_file():
        try:
            c = json.loads(cache.read_text())
            if c.get("version") == CORPUS_VERSION:
                return c
        except (json.JSONDecodeError, OSError):
            pass
    t = time.perf_counter()
    docs: dict[str, str] = {}
    import pydoc_data.topics as topics
    for k, v in topics.topics.items():
        docs[f"pydoc:{k}"] = v
    roots = [("std", Path(sysconfig.get_paths()["stdlib"]))]
    import matplotlib
    import numpy
    import sklearn
    for mod in (numpy, sklearn, matplotlib):
        roots.append((mod.__name__, Path(mod.__file__).parent))
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "testing", "_vendor",
            "externals", "__pycache__"}
    for tag, root in roots:
        for p in sorted(root.rglob("*.py")):
            rel = p.relative_to(root)
            if skip & set(rel.parts):
                continue
            text = _docstrings(p)
            if text:
                docs[f"{tag}:{rel.as_posix()}"] = text
    seen, train, test = set(), [], []
    for name in sorted(docs):
        held = zlib.crc32(name.encode()) % 8 == 0
        for s in _sentences(docs[name]):
            if s in seen:
                continue
            seen.add(s)
            (test if held else train).append(s)
    from compress.models import load_sentences
    general = load_sentences()
    gen = set(general)
    train = [s for s in train if s not in gen]
    test = [s for s in test if s not in gen]
    c = {"version": CORPUS_VERSION, "documents": len(docs), "train": train, "test_tech": test,
         "test_general": general,
         "sources": "pydoc_data.topics + docstrings of stdlib, numpy, sklearn, matplotlib"}
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(c))
    os.replace(tmp, cache)
    progress(f"corpus: {len(docs)} documents -> {len(train)} train / {len(test)} held-out "
             f"sentences ({time.perf_counter() - t:.0f}s, cached in {cache})")
    return c
