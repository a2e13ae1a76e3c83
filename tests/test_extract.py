"""Extraction on local checkpoints of every family: shapes, and values equal to a plain
forward of the same modules with no hooks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolens.engine.models import registry
from neurolens.engine.runtime.extract import extract, pooled_activations
from neurolens.engine.runtime.hooks import on_sites
from neurolens.engine.runtime.pooling import pool
from neurolens.store import Store, connect, read_layer

FAMILIES = ("gpt2", "bert", "roberta", "resnet", "llama")


def reference_site(adapter, batch, layer: int) -> torch.Tensor:
    """The site's activations recomputed from hidden states, module by module, no hooks."""
    with torch.inference_mode():
        if adapter.family == "gpt2":  # single-example batches: no padding to mask
            tr = adapter.base()
            h = tr(**batch.inputs, output_hidden_states=True).hidden_states[layer]
            blk = tr.h[layer]
            h2 = h + blk.attn(blk.ln_1(h))[0]
            return blk.mlp.act(blk.mlp.c_fc(blk.ln_2(h2)))
        if adapter.family == "llama":
            # act(gate) * up from the MLP's weights and its input (captured on the MLP,
            # not on the site): the neuron down_proj reads, not act_fn's output
            mlp = adapter.base().layers[layer].mlp
            seen = {}
            h = mlp.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0]))
            try:
                adapter.forward(batch)
            finally:
                h.remove()
            x = seen["x"]
            return mlp.act_fn(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
        if adapter.family in ("bert", "roberta"):
            base = adapter.base()
            out = base(**batch.inputs, output_hidden_states=True)
            h = out.hidden_states[layer]
            lay = base.encoder.layer[layer]
            att = lay.attention(h)[0]
            return lay.intermediate(att)
        base = adapter.base()
        out = base(**batch.inputs, output_hidden_states=True)
        return out.hidden_states[layer + 1]  # one block per stage in the planted ResNet


def stage_last_block(adapter) -> list[int]:
    if adapter.family != "resnet":
        return [0, adapter.n_layers - 1]
    ends, n = [], 0
    for st in adapter.base().encoder.stages:
        n += len(st.layers)
        ends.append(n - 1)
    return ends


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_matches_plain_forward(family, planted_factory, tmp_path):
    pm = planted_factory(family)
    adapter = registry.load(str(pm.path))
    assert adapter.family == family
    store = Store(tmp_path / "store")
    layers = list(range(adapter.n_layers))
    st = extract(adapter, pm.probes, store, layers=layers, run_id="t1", batch_size=16)
    assert st.layers == layers
    n = len(pm.probes.examples)
    for l in layers:
        ids, acts = read_layer(store, adapter.name, pm.probes.concept, l)
        assert acts.shape == (n, adapter.n_neurons(l)) and acts.dtype == np.float16
        assert np.array_equal(ids, np.arange(n))
        # what scoring takes from memory is exactly what was published
        held_ids, held = st.acts[l]
        assert np.array_equal(held_ids, ids) and np.array_equal(held, acts)
    # the activations are written plain, the other columns compressed
    import pyarrow.parquet as pq

    f = next((store.root / "activations").rglob("*.parquet"))
    meta = pq.ParquetFile(f).metadata.row_group(0)
    kinds = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert kinds["acts.list.element"] == "UNCOMPRESSED" and kinds["example_id"] == "ZSTD"
    # one neuron, a few examples, against the plain recomputation (single-example batches:
    # causal GPT-2 ignores right padding anyway, but this keeps the reference simple)
    checks = [l for l in stage_last_block(adapter) if l in layers][:2]
    ex = pm.probes.examples[:3]
    for b in adapter.batches(ex, 1):
        for l in checks:
            ref = pool(reference_site(adapter, b, l), "mean", b.mask)
            ids, acts = read_layer(store, adapter.name, pm.probes.concept, l)
            row = int(b.index[0])
            j = int(torch.argmax(ref[0].abs()))
            got = float(acts[row, j])
            assert got == pytest.approx(float(ref[0, j]), rel=2e-3, abs=2e-3), (l, j)
            np.testing.assert_allclose(acts[row].astype(np.float32), ref[0].numpy(), rtol=5e-3, atol=5e-3)


def test_rerun_skips_and_views(planted_factory, tmp_path):
    pm = planted_factory("bert")
    adapter = registry.load(str(pm.path))
    store = Store(tmp_path / "store")
    extract(adapter, pm.probes, store, layers=[0, 1], run_id="a")
    again = extract(adapter, pm.probes, store, layers=[0, 1, 2], run_id="b")
    assert again.layers == [2]  # finished layers are not redone
    con = connect(store)
    rows = con.sql("select layer, count(*) from activations group by layer order by layer").fetchall()
    assert rows == [(0, len(pm.probes.examples)), (1, len(pm.probes.examples)), (2, len(pm.probes.examples))]
    assert con.execute("select count(*) from examples").fetchone()[0] == len(pm.probes.examples)


def test_forward_stops_after_last_layer(planted_factory):
    pm = planted_factory("gpt2")
    adapter = registry.load(str(pm.path))
    seen = []
    with on_sites(adapter, [adapter.n_layers - 1], lambda l, a: seen.append(l)):
        pooled_activations(adapter, pm.probes.examples[:4], [0], batch_size=4)
    assert seen == []  # the last block never ran


def test_batches_are_length_sorted_and_cover_everything(minilm):
    from neurolens.probes import load_concept

    ex = load_concept("negation").examples[:100]
    seen, lens = [], []
    for b in minilm.batches(ex, 16):
        seen += b.index.tolist()
        lens.append(int(b.mask.sum(1).max()))
    assert sorted(seen) == list(range(100)) and lens == sorted(lens)


@pytest.mark.parametrize("how", ["mean", "max", "last", "concept"])
def test_pooling_respects_mask(how):
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    cm = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]])
    got = pool(x, how, mask, cm)
    ref0 = {"mean": x[0, :2].mean(0), "max": x[0, :2].max(0).values, "last": x[0, 1], "concept": x[0, 1]}[how]
    ref1 = {"mean": x[1].mean(0), "max": x[1].max(0).values, "last": x[1, 3], "concept": x[1].mean(0)}[how]
    assert torch.allclose(got[0], ref0) and torch.allclose(got[1], ref1)


def test_bfloat16_compute(planted_factory, tmp_path):
    pm = planted_factory("bert")
    a32 = registry.load(str(pm.path))
    a16 = registry.load(str(pm.path), dtype="bfloat16")
    _, b32, _ = pooled_activations(a32, pm.probes.examples[:16], [1])
    _, b16, _ = pooled_activations(a16, pm.probes.examples[:16], [1])
    assert b16[1].dtype == torch.float16
    assert torch.allclose(b32[1].float(), b16[1].float(), atol=0.15, rtol=0.1)


def test_model_errors():
    from neurolens.engine.models.adapters.base import ModelError

    with pytest.raises(ModelError, match="unknown model"):
        registry.load("no-such-model")
    with pytest.raises(ModelError, match="no cached weights"):
        registry.load("gpt2")
    with pytest.raises(ModelError, match="out of range"):
        registry.load("minilm").check_layers([6])


def test_torchvision_weights_need_torchvision():
    """Without an importable torchvision, its models are one clear error, not a crash."""
    import importlib.util

    from neurolens.engine.models.adapters.base import ModelError

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    with pytest.raises(ModelError, match="needs torchvision"):
        registry.load("torchvision:resnet18")
