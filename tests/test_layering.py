"""The stages stay in their rooms: every module's imports (ast, including imports inside
functions) follow DESIGN's layout table. Two leaf modules, neurolens.errors and
neurolens.constants, import nothing of ours and may be imported from every folder."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("probes", "engine", "numerics", "store", "queries", "reports")
#: folder -> the folders it may import (DESIGN "Layout"); `neurolens` is the package's face
ALLOWED = {
    "probes": set(),
    "numerics": set(),
    "store": set(),
    "engine": {"probes", "store", "numerics"},
    "queries": {"store"},
    "reports": {"store", "queries"},
    "neurolens": {"neurolens", *SUBPACKAGES},
}
LEAVES = ("neurolens.errors", "neurolens.constants")
#: engine's rooms -> the rooms each may import (DESIGN "Layout": one room per stage, nothing
#: reaches back up: models < runtime < causal; labels read what runtime and models give;
#: planted builds checkpoints that models load)
ROOMS = ("models", "runtime", "causal", "labels", "planted")
ROOM_ALLOWED = {
    "models": set(),
    "runtime": {"models"},
    "causal": {"models", "runtime"},
    "labels": {"models", "runtime"},
    "planted": {"models"},
}
#: leaf modules of a room that import nothing of ours: every room may use them (a model's
#: layers go on the fast kernels at load; every stage reports progress the same way)
ROOM_LEAVES = ("neurolens.engine.runtime.fast", "neurolens.engine.runtime.progress")


def owner(module: str) -> str | None:
    """The folder an absolute module name lives in; None for a leaf or a foreign module."""
    parts = module.split(".")
    if parts[0] != "neurolens":
        return None
    if any(module == leaf or module.startswith(leaf + ".") for leaf in LEAVES):
        return None
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "neurolens"


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module) of every `import x` / `from x import y` (relative ones stay home)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "neurolens":   # `from neurolens import engine, errors`
                out += [(node.lineno, f"neurolens.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def violations(folder: str, source: str, name: str = "<module>") -> list[str]:
    """What this module of `folder` imports that the layout table does not allow."""
    bad = []
    for line, mod in imported(ast.parse(source, name)):
        target = owner(mod)
        if target is not None and target != folder and target not in ALLOWED[folder]:
            bad.append(f"{name}:{line}: {folder}/ imports {mod} ({target}/)")
    return bad


def room(module: str) -> str | None:
    """The engine room an absolute module name lives in; None outside engine or for a room leaf."""
    parts = module.split(".")
    if parts[:2] != ["neurolens", "engine"] or len(parts) < 3 or module in ROOM_LEAVES:
        return None
    return parts[2] if parts[2] in ROOMS else "engine"


def room_violations(name_room: str, source: str, name: str = "<module>") -> list[str]:
    """What this module of engine room `name_room` imports from a room it may not reach."""
    bad = []
    for line, mod in imported(ast.parse(source, name)):
        target = room(mod)
        if target is not None and target != name_room and target not in ROOM_ALLOWED.get(name_room, set()):
            bad.append(f"{name}:{line}: engine/{name_room}/ imports {mod} (engine/{target}/)")
    return bad


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folder_imports_only_what_the_layout_allows(folder):
    files = modules(folder)
    assert files, f"no modules under {folder}/"
    bad = [v for f in files for v in violations(folder, f.read_text(encoding="utf-8"),
                                                str(f.relative_to(ROOT)))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ROOMS)
def test_engine_rooms_import_only_the_rooms_below(name):
    files = modules(f"engine/{name}")
    assert files, f"no modules under engine/{name}/"
    bad = [v for f in files for v in room_violations(name, f.read_text(encoding="utf-8"),
                                                     str(f.relative_to(ROOT)))]
    assert not bad, "\n".join(bad)


def test_engine_has_only_rooms():
    """engine/ is a floor of rooms: no stage module lies loose beside them."""
    loose = [p.name for p in (ROOT / "engine").glob("*.py") if p.name != "__init__.py"]
    assert loose == []


@pytest.mark.parametrize("leaf", ROOM_LEAVES)
def test_room_leaves_import_nothing_of_ours(leaf):
    path = ROOT / (leaf.replace("neurolens.", "", 1).replace(".", "/") + ".py")
    ours = [m for _, m in imported(ast.parse(path.read_text(encoding="utf-8"))) if m.split(".")[0] == "neurolens"
            and m not in LEAVES]
    assert ours == []


@pytest.mark.parametrize("name, source", [
    ("models", "from neurolens.engine.runtime.extract import extract\n"),
    ("runtime", "from neurolens.engine.causal.importance import InPass\n"),
    ("models", "def f():\n    from neurolens.engine.labels.stage import label\n"),
    ("planted", "import neurolens.engine.causal.confidence\n"),
])
def test_the_room_checker_catches_an_upward_import(name, source):
    assert len(room_violations(name, source)) == 1


@pytest.mark.parametrize("name, source", [
    ("models", "from neurolens.engine.runtime.fast import use_fast_kernels\n"),
    ("causal", "from neurolens.engine.runtime.hooks import on_sites\nfrom neurolens.engine.models import registry\n"),
    ("labels", "from neurolens.engine.labels.text import x\n"),
])
def test_the_room_checker_allows_what_the_rooms_allow(name, source):
    assert room_violations(name, source) == []


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_of_ours(leaf):
    path = ROOT / (leaf.replace(".", "/") + ".py")
    ours = [m for _, m in imported(ast.parse(path.read_text(encoding="utf-8"))) if m.split(".")[0] == "neurolens"]
    assert ours == []


@pytest.mark.parametrize("folder, source", [
    ("engine", "from neurolens.queries.runner import named\n"),
    ("engine", "def f():\n    import neurolens.queries\n"),          # inside a function too
    ("engine", "from neurolens import reports\n"),
    ("reports", "from neurolens.probes import load_image\n"),
    ("store", "from neurolens.numerics import finalize\n"),
    ("probes", "from neurolens.api import load\n"),
    ("queries", "from neurolens.config import store_dir\n"),          # the package face
])
def test_the_checker_catches_a_forbidden_import(folder, source):
    assert len(violations(folder, source)) == 1


@pytest.mark.parametrize("folder, source", [
    ("engine", "from neurolens.store import Store\nfrom neurolens.probes.types import ProbeSet\n"),
    ("numerics", "from neurolens.constants import ALPHA\nfrom neurolens.errors import ConfigError\n"),
    ("store", "from .layout import Store\nimport numpy\n"),
    ("reports", "from neurolens.queries import sql\n"),
    ("neurolens", "from neurolens.reports import render_set\n"),
])
def test_the_checker_allows_what_the_layout_allows(folder, source):
    assert violations(folder, source) == []


def test_no_folder_of_the_checkout_shadows_an_installed_package():
    """Every package folder at the root of a checkout is importable under its bare name whenever
    the checkout is on sys.path (`python -m ...`, a notebook started there), ahead of
    site-packages: none may be the import name of an installed distribution (transformers
    >= 5.25 installs and imports Hugging Face's `kernels`, which a `kernels/` folder hid)."""
    import importlib.metadata as md

    installed = md.packages_distributions()
    ours = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert "numerics" in ours and "engine" in ours
    clashes = {name: installed[name] for name in ours
               if name in installed and set(installed[name]) != {"neurolens"}}
    assert clashes == {}, f"folders named like installed packages: {clashes}"
