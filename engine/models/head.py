"""A target token's log-probability through a large LM head without the full logits.

log p(t | x) = z_t - logsumexp_v z_v, z = post(x W^T + b). The confidence needs only that
one number per row, so the log-sum-exp is taken over vocabulary chunks of a bounded size in
one reused buffer, and the [rows, V] logits and their log-softmax are never held at once.
With a 262,144-token head (Gemma 3) the full path writes and rereads 512 MiB twice for a few
hundred rows; this one holds [rows, cols] at a time. Exact: the same products, the
running maximum taken per chunk, nothing dropped. Under autograd each chunk is
recomputed in the backward (activation checkpointing), so gradients cost the same memory.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

#: logit elements one chunk may hold (rows x cols): 64 MiB of float32, against 512 MiB for 512 rows in full
CHUNK_ELEMENTS = 1 << 24
MIN_COLS = 2048

Post = Callable[[torch.Tensor], torch.Tensor]


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def chunk_cols(rows: int, vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Vocabulary columns per chunk: `elements` logits at a time, at least MIN_COLS."""
    return int(min(vocab, max(MIN_COLS, elements // max(1, rows))))


def target_logprobs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    targets: torch.Tensor, *, post: Post | None = None,
                    cols: int | None = None) -> torch.Tensor:
    """[B] float32 log p(targets | x) for hidden states x [B, D] through the head
    (weight [V, D], bias [V] or None); `post` is the family's elementwise map of the
    logits (a scaling, a soft-cap), applied to every chunk and to the target logit."""
    post = post or _identity
    V = weight.shape[0]
    cols = cols or chunk_cols(x.shape[0], V)
    if cols >= V:       # the logits fit one chunk: the plain fused log-softmax is as lean
        return full_target_logprobs(x, weight, bias, targets, post=post)
    wt = weight[targets]
    z_t = (x.float() * wt.float()).sum(-1)
    if bias is not None:
        z_t = z_t + bias[targets].float()
    z_t = post(z_t)
    grad = torch.is_grad_enabled() and x.requires_grad
    if not grad and post is _identity and x.dtype == torch.float32 and weight.dtype == torch.float32:
        return z_t - _lse_in_place(x, weight, bias, cols)
    parts = []
    for s in range(0, V, cols):
        w, b = weight[s:s + cols], None if bias is None else bias[s:s + cols]
        if grad:
            parts.append(checkpoint(_chunk_lse, x, w, b, post, use_reentrant=False))
        else:
            parts.append(_chunk_lse(x, w, b, post))
    return z_t - torch.logsumexp(torch.stack(parts, -1), -1)


def _chunk_lse(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, post: Post) -> torch.Tensor:
    return torch.logsumexp(post(F.linear(x, w, b).float()), -1)


def _lse_in_place(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cols: int) -> torch.Tensor:
    """[B] logsumexp of x W^T + b, one reused [B, cols] buffer: no fresh gigabyte to fault
    in page by page, and each chunk's max, exp and sum run while it is in cache."""
    B, V = x.shape[0], weight.shape[0]
    buf = torch.empty(B * cols, dtype=torch.float32, device=x.device)
    m_all = torch.empty(B, (V + cols - 1) // cols, dtype=torch.float32, device=x.device)
    s_all = torch.empty_like(m_all)
    for c, s in enumerate(range(0, V, cols)):
        n = min(cols, V - s)
        z = buf[:B * n].view(B, n)
        if bias is None:
            torch.mm(x, weight[s:s + n].t(), out=z)
        else:
            torch.addmm(bias[s:s + n], x, weight[s:s + n].t(), out=z)
        m = torch.amax(z, 1, out=m_all[:, c])
        z.sub_(m[:, None]).exp_()
        torch.sum(z, 1, out=s_all[:, c])
    top = m_all.amax(1, keepdim=True)
    return top[:, 0] + (s_all * (m_all - top).exp()).sum(1).log()


def full_target_logprobs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, *, post: Post | None = None) -> torch.Tensor:
    """The same number the plain way (all logits, log-softmax, gather): the reference the
    chunked path is tested and timed against."""
    post = post or _identity
    lp = torch.log_softmax(post(F.linear(x, weight, bias).float()), -1)
    return lp[torch.arange(x.shape[0], device=x.device), targets]
