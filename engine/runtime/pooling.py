"""Pool a site's activations to one vector per example, respecting the attention mask.

Text sites are [B, T, N]; vision sites are [B, C, H, W] (pooled spatially).
The result is [B, N] in float32, still on the model's device.
"""
from __future__ import annotations

import torch

POOLINGS = ("mean", "max", "last", "concept")


def pool(acts: torch.Tensor, how: str, mask: torch.Tensor | None = None,
         concept_mask: torch.Tensor | None = None) -> torch.Tensor:
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling {how!r}; choose from {', '.join(POOLINGS)}")
    if acts.dim() == 4:  # vision: channels over space
        x = acts.float().flatten(2)
        return x.amax(dim=2) if how == "max" else x.mean(dim=2)
    x = acts.float()
    if mask is None:
        mask = torch.ones(x.shape[:2], device=x.device, dtype=torch.bool)
    m = mask.bool()
    if how == "concept" and concept_mask is not None:
        cm = concept_mask.bool() & m
        has = cm.any(dim=1, keepdim=True)
        m = torch.where(has, cm, m)  # examples without a marked word fall back to mean
        how = "mean"
    if how == "mean" or how == "concept":
        # a batched matrix product: no [B, T, N] temporary for the masked sum
        w = m.to(x.dtype)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.bmm(w.unsqueeze(1), x).squeeze(1)
    if how == "max":
        return x.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(dim=1)
    last = m.long().sum(dim=1).clamp_min(1) - 1  # right padding: the last real token
    return x[torch.arange(x.shape[0], device=x.device), last]
