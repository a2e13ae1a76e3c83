"""The model's layers on faster kernels (engine/runtime/fast.py). Dense layers on oneDNN: the same
products as torch's, a correct input gradient, and torch's own path wherever oneDNN does not
apply; GPT-2's GELU fused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from neurolens.engine.runtime import fast as lin

needs_onednn = pytest.mark.skipif(not lin.available(), reason="this torch build has no oneDNN linear kernel")


def _model():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.GELU(), Conv1D(16, 40), nn.Linear(16, 8, bias=False))


@pytest.fixture
def conv_on_onednn(monkeypatch):
    """The Conv1D on oneDNN whatever this CPU measures, so that every path is tested."""
    monkeypatch.setattr(lin, "conv1d_prefers_onednn", lambda *_: True)


@needs_onednn
def test_switched_layers_equal_a_float64_reference(conv_on_onednn):
    m = _model().requires_grad_(False)
    ref = _model().double()
    assert lin.use_onednn(m) == 3
    assert all(isinstance(x, nn.Linear) for x in (m[0], m[3]))
    assert type(m[0]) is not nn.Linear and type(m[2]).__name__ != "Conv1D"
    x = torch.randn(5, 7, 24)
    with torch.no_grad():
        got, want = m(x), ref(x.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_conv1d_kernel_chosen_by_measuring_this_cpu(monkeypatch):
    """A Conv1D goes to oneDNN only where oneDNN measured faster for its weight shape;
    otherwise it stays transformers' own layer, with the same output."""
    from transformers.pytorch_utils import Conv1D

    asked = []
    monkeypatch.setattr(lin, "conv1d_prefers_onednn", lambda *shape: asked.append(shape) or False)
    m = _model().requires_grad_(False)
    assert lin.use_onednn(m) == 2
    assert type(m[2]) is Conv1D and asked == [(40, 16)]
    x = torch.randn(5, 7, 24)
    with torch.no_grad():
        torch.testing.assert_close(m(x).double(), _model().double()(x.double()), rtol=1e-5, atol=1e-5)
    asked.clear()
    lin.use_onednn(_model().to(torch.bfloat16))      # a weight oneDNN's path never takes: not timed
    assert asked == []


@needs_onednn
def test_conv1d_timing_leaves_the_random_state():
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    assert isinstance(lin._time_conv1d(64, 96), bool)
    assert torch.equal(torch.rand(3), want)           # the caller's random state untouched


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty NeuroLens cache, and no choice remembered by this process."""
    monkeypatch.setenv("NEUROLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NEUROLENS_CONV1D", raising=False)
    lin._stored_choice.cache_clear()
    yield tmp_path / "cache" / "kernels"
    lin._stored_choice.cache_clear()


def test_conv1d_choice_timed_once_per_machine_then_read_back(fresh_cache, monkeypatch):
    """The first process times the shape and stores the answer; a later process (here: the
    in-process memo cleared) reads it back and never times again, whatever a new race says."""
    timed = []
    monkeypatch.setattr(lin, "_time_conv1d", lambda *shape: timed.append(shape) or True)
    assert lin.conv1d_prefers_onednn(64, 96) is True
    files = list(fresh_cache.glob("conv1d-64x96-*.json"))
    assert timed == [(64, 96)] and len(files) == 1
    assert [p.name for p in fresh_cache.iterdir()] == [files[0].name]      # no temporary left
    lin._stored_choice.cache_clear()
    monkeypatch.setattr(lin, "_time_conv1d", lambda *shape: timed.append(shape) or False)
    assert lin.conv1d_prefers_onednn(64, 96) is True and timed == [(64, 96)]
    assert lin.conv1d_prefers_onednn(96, 64) is False and timed[-1] == (96, 64)   # per shape


def test_conv1d_choice_first_writer_wins(fresh_cache):
    """Two processes timing the same shape at once: the second keeps the first's answer."""
    f = lin._choice_file(64, 96)
    assert lin._store_choice(f, False, 64, 96) is False
    assert lin._store_choice(f, True, 64, 96) is False
    assert lin._read_choice(f) is False


def test_conv1d_choice_fixed_by_environment_or_torch_when_cache_unwritable(fresh_cache, monkeypatch):
    monkeypatch.setattr(lin, "_time_conv1d", lambda *shape: True)
    monkeypatch.setenv("NEUROLENS_CONV1D", "torch")
    assert lin.conv1d_prefers_onednn(64, 96) is False
    lin._stored_choice.cache_clear()
    monkeypatch.setenv("NEUROLENS_CONV1D", "onednn")
    assert lin.conv1d_prefers_onednn(8, 8) is True
    assert not fresh_cache.exists()                   # a fixed choice is not timed or stored
    lin._stored_choice.cache_clear()
    monkeypatch.delenv("NEUROLENS_CONV1D")
    blocker = fresh_cache.parent.parent / "file"
    blocker.write_text("")
    monkeypatch.setenv("NEUROLENS_CACHE", str(blocker))     # a cache that cannot be made
    assert lin.conv1d_prefers_onednn(64, 96) is False       # torch's own: a fixed rule


@needs_onednn
def test_choices_name_each_kernel_and_the_tag_follows_them(monkeypatch):
    from transformers.pytorch_utils import Conv1D

    monkeypatch.setattr(lin, "conv1d_prefers_onednn", lambda *_: True)
    m = _model().requires_grad_(False)
    assert lin.choices(m) == {"linear": "torch", "conv1d": {"40x16": "torch"}, "placement": "cpu",
                              "threads": torch.get_num_threads()}
    plain = lin.choices_tag(m)
    lin.use_onednn(m)
    assert lin.choices(m)["linear"] == "onednn" and lin.choices(m)["conv1d"] == {"40x16": "onednn"}
    on = lin.choices_tag(m)
    m2 = _model().requires_grad_(False)
    monkeypatch.setattr(lin, "conv1d_prefers_onednn", lambda *_: False)
    lin.use_onednn(m2)
    assert type(m2[2]) is Conv1D and lin.choices(m2)["conv1d"] == {"40x16": "torch"}
    assert len({plain, on, lin.choices_tag(m2)}) == 3
    assert lin.choices_tag(m) == on                    # the same kernels, the same tag
    m.hf_device_map = {"0": 0, "2": "cpu", "3": "disk"}      # as accelerate's --device-map leaves it
    assert lin.choices(m)["placement"] == "cpu=2,cuda:0=1" and lin.choices_tag(m) != on


@needs_onednn
def test_input_gradient_matches_torch(conv_on_onednn):
    m, plain = _model(), _model()
    for p in list(m.parameters()) + list(plain.parameters()):
        p.requires_grad_(False)
    lin.use_onednn(m)
    x = torch.randn(3, 4, 24, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    (m(x) ** 2).sum().backward()
    (plain(x2) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_torch_path_where_onednn_does_not_apply(monkeypatch, conv_on_onednn):
    m = _model().requires_grad_(False)      # frozen, as every adapter leaves its model
    lin.use_onednn(m)
    calls = []
    real = lin._op()
    monkeypatch.setattr(lin, "_op", lambda: (lambda *a: calls.append(1) or real(*a)))
    with torch.no_grad():
        m(torch.randn(2, 24))
    assert len(calls) == 3
    calls.clear()
    with torch.no_grad():
        m.to(torch.bfloat16)(torch.randn(2, 24, dtype=torch.bfloat16))   # half precision
    assert calls == []
    m = _model().float()
    lin.use_onednn(m)
    x = torch.randn(2, 24)
    (m(x) ** 2).sum().backward()        # weights that want a gradient: torch's own layer
    assert calls == [] and m[0].weight.grad is not None


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("NEUROLENS_ONEDNN", "0")
    assert not lin.available()
    m = _model()
    assert lin.use_onednn(m) == 0 and type(m[0]) is nn.Linear


def test_fused_gelu_equals_gpt2s_and_a_float64_reference():
    import math

    from transformers.activations import NewGELUActivation

    m = nn.Sequential(nn.Linear(8, 8), NewGELUActivation()).requires_grad_(False)
    slow = NewGELUActivation()
    assert lin.use_fast_kernels(m)["gelu"] == 1 and isinstance(m[1], NewGELUActivation)
    x = torch.randn(64, 300) * 4
    ref = 0.5 * x.double() * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x.double() + 0.044715 * x.double() ** 3)))
    torch.testing.assert_close(m[1](x).double(), ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(m[1](x), slow(x), rtol=0, atol=2e-6)


_HEAP_PROBE = r"""
import ctypes, json, sys
class MI(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MI
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
from neurolens.engine.runtime.fast import keep_heap
kept = keep_heap()
before = libc.mallinfo2()
p = libc.malloc(16 << 20)          # an activation-sized block, as a forward allocates it
ctypes.memset(p, 1, 16 << 20)
during = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
print(json.dumps({"kept": kept, "mmapped": during.hblkhd - before.hblkhd,
                  "arena_after_free": after.arena - before.arena}))
"""


def _heap_probe(env: dict) -> dict:
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_heap_kept_in_the_process():
    """With the heap kept, a 16 MiB block is served from the heap and stays there after its
    free (a forward reuses it, no page faults); with NEUROLENS_HEAP=0 glibc maps it and
    hands it back to the kernel."""
    import ctypes

    libc = ctypes.CDLL(None)
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")):
        pytest.skip("not glibc >= 2.33")
    on, off = _heap_probe({"NEUROLENS_HEAP": "1"}), _heap_probe({"NEUROLENS_HEAP": "0"})
    assert on["kept"] and not off["kept"]
    assert on["mmapped"] == 0 and on["arena_after_free"] >= 16 << 20
    assert off["mmapped"] >= 16 << 20 and off["arena_after_free"] < 16 << 20
