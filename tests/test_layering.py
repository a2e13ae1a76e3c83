"""The stages stay in their rooms: every module's imports (ast, including imports inside
functions) follow DESIGN's layout table. Two leaf modules, neurolens.errors and
neurolens.constants, import nothing of ours and may be imported from every folder."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("probes", "engine", "kernels", "store", "queries", "reports")
#: folder -> the folders it may import (DESIGN "Layout"); `neurolens` is the package's face
ALLOWED = {
    "probes": set(),
    "kernels": set(),
    "store": set(),
    "engine": {"probes", "store", "kernels"},
    "queries": {"store"},
    "reports": {"store", "queries"},
    "neurolens": {"neurolens", *SUBPACKAGES},
}
LEAVES = ("neurolens.errors", "neurolens.constants")


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


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folder_imports_only_what_the_layout_allows(folder):
    files = modules(folder)
    assert files, f"no modules under {folder}/"
    bad = [v for f in files for v in violations(folder, f.read_text(encoding="utf-8"),
                                                str(f.relative_to(ROOT)))]
    assert not bad, "\n".join(bad)


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
    ("store", "from neurolens.kernels import finalize\n"),
    ("probes", "from neurolens.api import load\n"),
    ("queries", "from neurolens.config import store_dir\n"),          # the package face
])
def test_the_checker_catches_a_forbidden_import(folder, source):
    assert len(violations(folder, source)) == 1


@pytest.mark.parametrize("folder, source", [
    ("engine", "from neurolens.store import Store\nfrom neurolens.probes.types import ProbeSet\n"),
    ("kernels", "from neurolens.constants import ALPHA\nfrom neurolens.errors import ConfigError\n"),
    ("store", "from .layout import Store\nimport numpy\n"),
    ("reports", "from neurolens.queries import sql\n"),
    ("neurolens", "from neurolens.reports import render_set\n"),
])
def test_the_checker_allows_what_the_layout_allows(folder, source):
    assert violations(folder, source) == []
