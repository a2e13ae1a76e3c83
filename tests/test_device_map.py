"""`--device-map auto --max-memory SIZE`: a model spread over CPU and disk by accelerate
gives the same scores and ablations as the same model in memory, and bad options are one
line and exit 2."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from neurolens.engine.models import registry
from neurolens.engine.models.adapters.base import ModelError
from neurolens.engine.models.placement import parse_max_memory, placement, resident

from neurolens.cli import main

pytestmark = pytest.mark.xdist_group("device_map")


def _budget(path) -> int:
    """A CPU budget of a third of the checkpoint: the rest must go to disk."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) // 3


def test_max_memory_forms():
    assert parse_max_memory("cpu=512MiB") == {"cpu": 512 * 2**20}
    assert parse_max_memory("1000", cpu_only=True) == {"cpu": 1000}
    every = parse_max_memory("2GiB")
    assert every["cpu"] == 2 * 2**30 and len(every) == 1 + torch.cuda.device_count()
    assert placement(None, None, None) is None
    assert placement(None, "cpu=1GiB", None).device_map == "auto"   # --max-memory implies auto
    for bad in ("lots", "cpu=", "cpu=-3GiB", "tpu=1GiB"):
        with pytest.raises(ModelError, match="--max-memory"):
            parse_max_memory(bad)
    with pytest.raises(ModelError, match="--device-map"):
        placement("everywhere", None, None)


@pytest.fixture(scope="module")
def offloaded(planted_factory):
    """(planted GPT-2, the model in memory, the same model with most of it on disk)."""
    pm = planted_factory("gpt2")
    disk = registry.load(str(pm.path), device_map="auto", max_memory=f"cpu={_budget(pm.path)}")
    yield pm, registry.load(str(pm.path)), disk
    del disk
    gc.collect()


def test_offload_puts_blocks_on_disk(offloaded):
    _pm, plain, disk = offloaded
    assert "disk" in set(disk.model.hf_device_map.values()), disk.model.hf_device_map
    assert disk.device == torch.device("cpu")
    readout = disk.neuron_readout(1)
    assert readout.weight.device.type == "meta"          # between forwards, not resident
    assert torch.equal(resident(readout), plain.neuron_readout(1).weight)


def test_offloaded_scores_equal_in_memory(offloaded, tmp_path):
    from neurolens.store.duck import connect

    from neurolens.pipeline import RunConfig, run

    pm, plain, disk = offloaded
    got = {}
    for tag, a in (("memory", plain), ("offload", disk)):
        cfg = RunConfig(model=str(pm.path), out=str(tmp_path / tag), layers=[1, 2], report=False,
                        relabel=False, device="cpu")
        res = run(cfg, adapter=a, probes=pm.probes)
        got[tag] = connect(tmp_path / tag / "store").sql(
            "select layer, neuron, selectivity, auc, cohens_d, p_value, consistency, importance, "
            "score, rank from scores order by layer, neuron").pl()
        assert {(r["layer"], r["neuron"]) for r in res.top.to_pylist()} & set(pm.planted)
    m, o = got["memory"], got["offload"]
    assert m.shape == o.shape and m.height == 2 * plain.n_neurons(1)
    for col in m.columns:
        # the store holds fp16 activations; importance is float32 through the same weights
        np.testing.assert_allclose(o[col].to_numpy().astype(float), m[col].to_numpy().astype(float),
                                   rtol=1e-3, atol=1e-4, equal_nan=True, err_msg=col)


def test_offloaded_ablation_equals_in_memory(offloaded):
    """Every ablation path (fan-out through the readout, shared prefix, plain replicas)
    reads offloaded weights correctly."""
    from neurolens.engine.causal.ablation.executor import ablate_sets
    from neurolens.engine.causal.confidence import Confidence

    pm, plain, disk = offloaded
    test = [e for e in pm.probes.examples if e.split == "test"][:8]
    sets = [[x] for x in pm.planted] + [pm.planted, [], [(0, 3), (2, 5)]]
    values = {l: np.linspace(-0.1, 0.3, plain.n_neurons(l)) for l in range(plain.n_layers)}
    ranges = {(l, n): (-0.05, 0.5) for s in sets for l, n in s}
    conf = Confidence(disk, pm.probes.examples)
    for method in ("zero", "range"):
        kw = {"method": method, "values": values, "ranges": ranges, "batch_size": 8}
        want = ablate_sets(plain, Confidence(plain, pm.probes.examples), test, sets, **kw)
        for path in ({}, {"share_prefix": False}):
            np.testing.assert_allclose(ablate_sets(disk, conf, test, sets, **kw, **path), want,
                                       atol=1e-5, err_msg=f"{method} {path}")
        assert np.abs(want[0] - want[len(pm.planted) + 1]).max() > 1e-3   # ablation matters


def test_device_map_errors_are_one_line(planted_factory, tmp_path, capsys):
    pm = planted_factory("gpt2")
    for extra, says in ((["--max-memory", "plenty"], "--max-memory"),
                        (["--device-map", "everywhere"], "--device-map")):
        argv = ["run", "--model", str(pm.path), "--concept", "royalty", "--no-report",
                "--out", str(tmp_path / "o"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("neurolens: error:") and says in err[0], err
    assert not (tmp_path / "o" / "store" / "scores").exists()


def test_torchvision_models_refuse_a_device_map():
    with pytest.raises(ModelError, match="--device-map"):
        registry.load("torchvision:resnet18", device_map="auto")


def test_offloaded_gated_decoder_equals_in_memory(tmp_path):
    """A Llama whose blocks are on disk: the input site of `down_proj` (read by a
    pre-hook, before accelerate's own hook loads the weights) gives the same pooled
    activations, and ablation through the offloaded readout the same confidences."""
    from gated_fixtures import build_tiny
    from neurolens.engine.causal.ablation.executor import ablate_sets
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.engine.runtime.extract import pooled_activations
    from neurolens.probes.types import Example

    path = build_tiny("llama", tmp_path / "llama")
    plain = registry.load(str(path))
    disk = registry.load(str(path), device_map="auto", max_memory=f"cpu={_budget(path)}")
    assert "disk" in set(disk.model.hf_device_map.values()), disk.model.hf_device_map
    words = ["king", "queen", "farmer", "doctor", "prince", "teacher"]
    ex = [Example(example_id=i, text=f"the {w} entered the hall", label=int(i % 2 == 0), group=w,
                  target="crown", split="test") for i, w in enumerate(words)]
    rows_p, acts_p, _ = pooled_activations(plain, ex, [0, 1], batch_size=4)
    rows_d, acts_d, _ = pooled_activations(disk, ex, [0, 1], batch_size=4)
    assert (rows_p == rows_d).all()
    for l in (0, 1):
        assert torch.equal(acts_p[l], acts_d[l]), l
    sets = [[(0, 3)], [(1, 5), (1, 7)], [(0, 1), (1, 2)], []]
    want = ablate_sets(plain, Confidence(plain, ex), ex, sets, batch_size=4)
    got = ablate_sets(disk, Confidence(disk, ex), ex, sets, batch_size=4)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(want[0] - want[-1]).max() > 1e-4
