"""Shared fixtures: small local checkpoints of every family (built, never downloaded)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    """Under pytest-xdist, share the cores between the workers: each worker's torch
    running a thread per core oversubscribes the machine, and spinning threads then
    slow every worker down many times over."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Fail loudly when `--dist loadgroup` groups nothing. pytest 9.2 ignores the node id
    suffix by which pytest-xdist 3.8 sends a group to one worker, so every group's session
    fixtures (a GGUF conversion, a Ray cluster) were built once per worker; constraints.txt
    pins a pytest that groups."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError("pytest-xdist's --dist loadgroup has no effect with this pytest "
                                    f"({pytest.__version__}); install with -c constraints.txt")


def converted_cache(tmp_path_factory, sha: str):
    """For a session fixture (`yield from`): NEUROLENS_CACHE pointing at a cache that holds,
    or will hold, the GGUF file `sha` converted: the user's cache when it was converted
    there before (a rerun converts nothing), else a temporary one; restored afterwards."""
    from neurolens.engine.models import gguf

    old = os.environ.get("NEUROLENS_CACHE")
    if not (gguf.cache_root() / sha / "neurolens-gguf.json").is_file():
        os.environ["NEUROLENS_CACHE"] = str(tmp_path_factory.mktemp("nl-cache"))
    yield gguf.cache_root() / sha
    if old is None:
        os.environ.pop("NEUROLENS_CACHE", None)
    else:
        os.environ["NEUROLENS_CACHE"] = old


@pytest.fixture(scope="session")
def planted_factory(tmp_path_factory):
    """build(family) -> PlantedModel, built once per test process."""
    from neurolens.engine.planted.build import build_planted

    cache: dict = {}

    def build(family: str, seed: int = 0):
        if (family, seed) not in cache:
            cache[family, seed] = build_planted(family, tmp_path_factory.mktemp(f"planted-{family}"), seed=seed)
        return cache[family, seed]

    return build


@pytest.fixture(scope="session")
def minilm():
    from neurolens.engine.models import registry

    return registry.load("minilm")
