"""The target log-probability from a chunked log-sum-exp equals the full log-softmax in
float64, with a bias and a soft-cap, for every chunk width (one column short of the
vocabulary, uneven tails), and its gradient equals the full path's."""
from __future__ import annotations

import pytest
import torch

from neurolens.engine.models import head


def _case(seed: int, B: int = 7, D: int = 24, V: int = 5003, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64) * 3
    w = torch.randn(V, D, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, V, (B,), generator=g)
    return x, w, b, t


def _reference(x, w, b, t, cap=None):
    z = x @ w.T + (0 if b is None else b)
    if cap:
        z = torch.tanh(z / cap) * cap
    return (z - torch.logsumexp(z, -1, keepdim=True))[torch.arange(len(t)), t]


@pytest.mark.parametrize("cols", [1, 97, 2048, 5002, 5003, None])
@pytest.mark.parametrize("cap", [None, 30.0])
def test_chunked_equals_full_softmax(cols, cap):
    x, w, b, t = _case(1)
    post = (lambda z: torch.tanh(z / cap) * cap) if cap else None
    got = head.target_logprobs(x, w, b, t, post=post, cols=cols)
    want = _reference(x, w, b, t, cap)
    # float32 accumulation in the chunked sum, float64 reference
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
    torch.testing.assert_close(head.full_target_logprobs(x, w, b, t, post=post).double(), want,
                               rtol=0, atol=2e-5)
    assert (want < -1).any()   # a real distribution, not one certain token


@pytest.mark.parametrize("cols", [1, 333, 5002])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_in_place_path_equals_float64_reference(cols, bias):
    """The no-grad float32 path (one reused buffer, in-place exp) against float64."""
    x, w, b, t = _case(3, bias=bias)
    got = head.target_logprobs(x.float(), w.float(), None if b is None else b.float(), t, cols=cols)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference(x, w, b, t), rtol=0, atol=5e-5)


def test_gradient_through_the_chunks_equals_the_full_gradient():
    x, w, _, t = _case(2, bias=False)
    x32, w32 = x.float(), w.float()
    a = x32.clone().requires_grad_(True)
    head.target_logprobs(a, w32, None, t, cols=512).sum().backward()
    r = x.clone().requires_grad_(True)
    _reference(r, w, None, t).sum().backward()
    torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-5)
    assert r.grad.abs().max() > 0.1


def test_chunk_width_keeps_a_chunk_small():
    assert head.chunk_cols(512, 262_144) == min(262_144, head.CHUNK_ELEMENTS // 512)
    assert head.chunk_cols(100_000, 262_144) == head.MIN_COLS
    assert head.chunk_cols(1, 1000) == 1000
