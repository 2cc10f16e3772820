"""Writing a whole output folder so that a failure never leaves half of it."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)        # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike):
    """Yields an empty sibling temporary folder; on success it replaces `out_dir`
    (old contents removed), on any exception it is deleted and `out_dir` is untouched.
    The final folder has the mode a plain mkdir would give it (0o777 & ~umask), not
    mkdtemp's 0o700."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if out_dir.exists() or out_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Deeper JSON is refused even where the parser copes: what is read is later written
# again (json.dumps of a manifest digest or a report), a few call levels further down
# the stack, where a parse that only just fitted would overflow.
MAX_JSON_DEPTH = 100


def _depth_within(value, limit: int) -> bool:
    """Whether arrays and objects nest at most `limit` deep (iteratively)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def load_json(path: str | os.PathLike, error: type[Exception], what: str = "a JSON file"):
    """Parses a JSON file (a UTF-8 byte-order mark is accepted); every way it can
    fail is one `error` line naming the file: missing, unreadable, not UTF-8,
    not JSON, nested too deep to parse or deeper than MAX_JSON_DEPTH."""
    path = Path(path)
    try:
        if not path.is_file():
            raise error(f"{path}: expected {what}, found "
                        f"{'a directory' if path.is_dir() else 'no such file'}")
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise error(f"{path}: expected {what}, found an unreadable file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: expected UTF-8 JSON, found undecodable byte at {e.start}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: expected JSON, found a parse error ({e})") from None
    except RecursionError:
        data = None
    else:
        if _depth_within(data, MAX_JSON_DEPTH):
            return data
    raise error(f"{path}: expected JSON of ordinary depth, found nesting too deep "
                f"to parse")
