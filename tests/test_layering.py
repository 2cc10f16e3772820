"""The project's import layering, checked statically with the ast module (nothing is
imported, so a broken module cannot hide its imports):

    contract  ssvq/{__init__,errors,config,image,reference,files}.py: import only each other
    hw/       the contract (never compress/, sim/ or ssvq.app)
    compress/ the contract (never hw/, sim/ or ssvq.app)
    sim/      the contract and hw/ (never compress/ or ssvq.app)
    ssvq.app  anything (the CLI sits on top of everything)

and no import cycle between the units ssvq (contract and any other ssvq module
outside ssvq.app), ssvq.app, compress, hw and sim. Every `import`, `from ... import`
(relative ones resolved), import inside a function, and `importlib.import_module` /
`__import__` with a literal name counts.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssvq", "compress", "hw", "sim")
CONTRACT = {"ssvq", "ssvq.errors", "ssvq.config", "ssvq.image", "ssvq.reference", "ssvq.files"}
# unit -> units it must not import
FORBIDDEN = {
    "hw": {"compress", "sim", "ssvq.app"},
    "compress": {"hw", "sim", "ssvq.app"},
    "sim": {"compress", "ssvq.app"},
}


@dataclass(frozen=True)
class Import:
    file: str        # path relative to the repository
    line: int
    text: str        # the statement, as written
    source: str      # importing module
    target: str      # imported project module


def module_name(rel: str) -> tuple[str, bool]:
    """'ssvq/app/cli.py' -> ('ssvq.app.cli', False); 'hw/__init__.py' -> ('hw', True)."""
    parts = list(Path(rel).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts.pop()
    return ".".join(parts), is_pkg


def is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def unit(module: str) -> str:
    if module == "ssvq.app" or module.startswith("ssvq.app."):
        return "ssvq.app"
    return module.split(".")[0]


def imports_of(rel: str, source: str, modules: set[str] | None = None) -> list[Import]:
    """Project imports in one file's source. `modules` (all project module names) lets
    `from pkg import name` resolve to the submodule pkg.name when there is one."""
    me, is_pkg = module_name(rel)
    package = me if is_pkg else me.rpartition(".")[0]
    tree = ast.parse(source, rel)
    lines = source.splitlines()
    out = []

    def add(node, target):
        if is_project(target):
            seg = ast.get_source_segment(source, node) or lines[node.lineno - 1].strip()
            out.append(Import(rel, node.lineno, " ".join(seg.split()), me, target))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(node, a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            targets = []
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if modules is not None and sub in modules:
                    targets.append(sub)
                elif not node.module and node.level:
                    targets.append(sub)          # `from . import x`: x is a module
            for t in dict.fromkeys(targets or [mod]):
                add(node, t)
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            arg = node.args[0]
            if (name in ("import_module", "__import__") and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)):
                add(node, arg.value)
    return out


def project_files(root: Path = ROOT) -> dict[str, str]:
    files = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            files[p.relative_to(root).as_posix()] = p.read_text()
    return files


def all_imports(files: dict[str, str]) -> list[Import]:
    modules = {module_name(rel)[0] for rel in files}
    return [i for rel, src in files.items() for i in imports_of(rel, src, modules)]


def rule_violations(imports: list[Import]) -> list[str]:
    bad = []
    for i in imports:
        src, dst = unit(i.source), unit(i.target)
        if i.source in CONTRACT:
            if i.target not in CONTRACT:
                bad.append(f"{i.file}:{i.line}: `{i.text}`: contract module {i.source} imports "
                           f"{i.target} (contract modules import only each other)")
        elif dst in FORBIDDEN.get(src, ()):
            bad.append(f"{i.file}:{i.line}: `{i.text}`: {src}/ imports {i.target} "
                       f"({src}/ must not import {', '.join(sorted(FORBIDDEN[src]))})")
    return bad


def cycle_violations(imports: list[Import]) -> list[str]:
    """Import cycles between units (ssvq, ssvq.app, compress, hw, sim): every edge that
    lies on a cycle, with one file:line where it is made."""
    edges: dict[tuple[str, str], Import] = {}
    for i in imports:
        a, b = unit(i.source), unit(i.target)
        if a != b:
            edges.setdefault((a, b), i)
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)

    def reaches(a, b):
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            for y in succ.get(x, ()):
                if y == b:
                    return True
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        return False
    bad = []
    for (a, b), i in sorted(edges.items()):
        if reaches(b, a):
            bad.append(f"{i.file}:{i.line}: `{i.text}`: {a} -> {b} is on an import cycle "
                       f"({b} imports back into {a})")
    return bad


def unresolved(imports: list[Import], files: dict[str, str]) -> list[str]:
    modules = {module_name(rel)[0] for rel in files}
    return [f"{i.file}:{i.line}: `{i.text}`: no project module {i.target}"
            for i in imports if i.target not in modules]


def _report(title, bad):
    return f"{title} ({len(bad)}):\n  " + "\n  ".join(bad)


# ------------------------------------------------------------------ the tree
class Tree(tuple):
    def __repr__(self):
        return f"<{len(self[0])} project files, {len(self[1])} project imports>"


@pytest.fixture(scope="module")
def tree():
    files = project_files()
    assert len(files) > 20 and "ssvq/config.py" in files and "sim/tb/test_accel.py" in files
    return Tree((files, all_imports(files)))


def test_checker_sees_the_tree(tree):
    files, imports = tree
    found = {(i.file, i.target) for i in imports}
    # known good imports of each kind: module level, from-import, lazy in a function
    assert ("hw/accel.py", "ssvq.config") in found
    assert ("sim/tb/test_accel.py", "sim.tb.driver") in found
    assert ("hw/verilog.py", "hw.accel") in found           # inside generate()
    assert ("ssvq/image.py", "ssvq.files") in found


def test_layering_rules(tree):
    _, imports = tree
    bad = rule_violations(imports)
    if bad:
        pytest.fail(_report("layering violations", bad), pytrace=False)


def test_no_import_cycles_between_packages(tree):
    _, imports = tree
    bad = cycle_violations(imports)
    if bad:
        pytest.fail(_report("import cycles", bad), pytrace=False)


def test_project_imports_resolve(tree):
    """Every imported project module exists (catches v1 leftovers such as
    compress.image, hw.config and ssvq.cli)."""
    files, imports = tree
    bad = unresolved(imports, files)
    if bad:
        pytest.fail(_report("imports of project modules that do not exist", bad),
                    pytrace=False)


# ------------------------------------------------------------ the rules bite
def _check(files):
    imports = all_imports(files)
    return rule_violations(imports), cycle_violations(imports)


@pytest.mark.parametrize("rel,source,expect", [
    ("hw/fake.py", "import numpy\nfrom compress.quantize import x\n",
     "hw/fake.py:2: `from compress.quantize import x`: hw/ imports compress.quantize"),
    ("hw/fake.py", "def f():\n    if True:\n        import sim.golden as g\n",
     "hw/fake.py:3: `import sim.golden as g`: hw/ imports sim.golden"),
    ("hw/fake.py", "from ssvq.app.cli import main\n", "hw/ imports ssvq.app.cli"),
    ("compress/fake.py", "from hw import accel\n", "compress/fake.py:1: `from hw import accel`: "
                                                    "compress/ imports hw.accel"),
    ("compress/fake.py", "import importlib\nm = importlib.import_module('sim.cost')\n",
     "compress/fake.py:2: `importlib.import_module('sim.cost')`: compress/ imports sim.cost"),
    ("compress/sub/fake.py", "from ...ssvq.app import commands\n", "imports ssvq.app"),
    ("sim/fake.py", "from compress.image import read_images\n", "sim/ imports compress.image"),
    ("sim/fake.py", "import ssvq.app\n", "sim/ imports ssvq.app"),
    ("ssvq/config.py", "from ssvq.errors import E\nfrom hw.accel import A\n",
     "ssvq/config.py:2: `from hw.accel import A`: contract module ssvq.config imports hw.accel"),
    ("ssvq/image.py", "from .app import cli\n",
     "contract module ssvq.image imports ssvq.app.cli"),
    ("ssvq/__init__.py", "from . import reference, app\n", "contract module ssvq imports ssvq.app"),
])
def test_rules_bite(rel, source, expect):
    files = {"hw/accel.py": "", "sim/golden.py": "", "ssvq/errors.py": "", "ssvq/app/cli.py": "",
             "ssvq/app/commands.py": "", "ssvq/app/__init__.py": "", "ssvq/reference.py": "",
             rel: source}
    rules, _ = _check(files)
    assert any(expect in b for b in rules), rules


@pytest.mark.parametrize("rel,source", [
    ("hw/fake.py", "from ssvq.config import AccelConfig\nfrom hw.accel import A\n"),
    ("sim/fake.py", "from hw.accel import PIPELINE_DEPTH\nfrom ssvq.image import read_images\n"),
    ("ssvq/image.py", "from ssvq.config import X\nfrom . import files, errors\n"),
    ("ssvq/app/x.py", "import compress.run, hw.synth, sim.runner\n"),
    ("compress/fake.py", "from ssvq.reference import outputs\nimport numpy\n"),
])
def test_allowed_imports_pass(rel, source):
    assert _check({rel: source}) == ([], [])


def test_cycle_rule_bites():
    """ssvq/extra.py is neither contract nor app, so only the cycle rule catches
    hw -> ssvq -> hw."""
    files = {"ssvq/extra.py": "import hw.accel\n",
             "hw/accel.py": "def f():\n    from ssvq.extra import y\n",
             "sim/golden.py": "import hw.accel\n"}
    rules, cycles = _check(files)
    assert rules == []
    assert cycles == [
        "hw/accel.py:2: `from ssvq.extra import y`: hw -> ssvq is on an import cycle "
        "(ssvq imports back into hw)",
        "ssvq/extra.py:1: `import hw.accel`: ssvq -> hw is on an import cycle "
        "(hw imports back into ssvq)"]


def test_unresolved_rule_bites():
    files = {"sim/cost.py": "from hw.config import AccelConfig\nfrom sim import golden\n",
             "sim/golden.py": "", "hw/accel.py": ""}
    assert unresolved(all_imports(files), files) == [
        "sim/cost.py:1: `from hw.config import AccelConfig`: no project module hw.config"]
