"""Shared fixtures: small local checkpoints of every family (built, never downloaded)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def planted_factory(tmp_path_factory):
    """build(family) -> PlantedModel, built once per test process."""
    from neurolens.engine.planted import build_planted

    cache: dict = {}

    def build(family: str, seed: int = 0):
        if (family, seed) not in cache:
            cache[family, seed] = build_planted(family, tmp_path_factory.mktemp(f"planted-{family}"), seed=seed)
        return cache[family, seed]

    return build


@pytest.fixture(scope="session")
def minilm():
    from neurolens.engine import registry

    return registry.load("minilm")
