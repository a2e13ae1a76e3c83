"""Accelerator backend: the same statistics with torch, on the tensor's device.

Values are promoted to float64 (exact for fp16/fp32 input); positives and
negatives are sorted separately along the example axis and U comes from two
batched ``searchsorted`` calls (#neg < v and #neg <= v for every positive v).
Results match the numba backend to rounding of the float64 sums.
"""

from __future__ import annotations

import numpy as np
import torch

from ._numba_impl import (
    AUC, CONSISTENCY, COHENS_D, DF, MEAN_NEG, MEAN_POS, N_FIELDS, NEG_P95, QUANTILE,
    RANGE_HI, RANGE_LO, RANGE_OVERLAP, STD_NEG, STD_POS, T, VALID,
)


@torch.no_grad()
def score_torch(acts: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """``acts`` [n, m] tensor on any device, ``y`` [n] 0/1 -> [N_FIELDS, m] float64 numpy."""
    dev = acts.device
    n, m = acts.shape
    yb = torch.as_tensor(np.asarray(y, dtype=bool), device=dev)
    npos = int(yb.sum().item())
    nneg = n - npos
    x = acts.to(torch.float64)
    finite = torch.isfinite(x).all(dim=0)
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=dev))
    P = x[yb].T.contiguous()   # [m, npos]
    N = x[~yb].T.contiguous()  # [m, nneg]
    del x
    P, _ = torch.sort(P, dim=1)
    N, _ = torch.sort(N, dim=1)

    nan = torch.full((m,), float("nan"), dtype=torch.float64, device=dev)
    out = torch.empty((N_FIELDS, m), dtype=torch.float64, device=dev)

    mp = P.sum(dim=1) / npos if npos > 0 else nan
    mn = N.sum(dim=1) / nneg if nneg > 0 else nan
    vp = ((P - mp[:, None]) ** 2).sum(dim=1) / (npos - 1) if npos > 1 else nan
    vn = ((N - mn[:, None]) ** 2).sum(dim=1) / (nneg - 1) if nneg > 1 else nan
    sp, sn = torch.sqrt(vp), torch.sqrt(vn)
    out[MEAN_POS], out[MEAN_NEG], out[STD_POS], out[STD_NEG] = mp, mn, sp, sn

    if npos > 0 and nneg > 0:
        lt = torch.searchsorted(N, P, right=False)
        le = torch.searchsorted(N, P, right=True)
        two_u = (lt + le).sum(dim=1).to(torch.float64)
        out[AUC] = two_u / (2.0 * npos * nneg)
    else:
        out[AUC] = 0.5

    if nneg > 0:
        vi = (nneg - 1) * QUANTILE
        if vi >= nneg - 1:
            thr = N[:, nneg - 1]
        else:
            lo = int(np.floor(vi))
            g = vi - lo
            a, b = N[:, lo], N[:, lo + 1]
            diff = b - a
            thr = b - diff * (1.0 - g) if g >= 0.5 else a + diff * g
        out[NEG_P95] = thr
        out[CONSISTENCY] = (P > thr[:, None]).sum(dim=1).to(torch.float64) / npos if npos > 0 else 0.0
    else:
        out[NEG_P95] = nan
        out[CONSISTENCY] = 0.0

    rlo, rhi = mp - 2.0 * sp, mp + 2.0 * sp
    out[RANGE_LO], out[RANGE_HI] = rlo, rhi
    if nneg > 0 and npos > 1:
        a_i = torch.searchsorted(N, rlo[:, None].contiguous(), right=False)[:, 0]
        b_i = torch.searchsorted(N, rhi[:, None].contiguous(), right=True)[:, 0]
        out[RANGE_OVERLAP] = (b_i - a_i).to(torch.float64) / nneg
    else:
        out[RANGE_OVERLAP] = nan

    if npos > 1 and nneg > 1:
        a1, a2 = vp / npos, vn / nneg
        se2 = a1 + a2
        ok = se2 > 0
        safe = torch.where(ok, se2, torch.ones_like(se2))
        out[T] = torch.where(ok, (mp - mn) / torch.sqrt(safe), nan)
        out[DF] = torch.where(ok, safe * safe / (a1 * a1 / (npos - 1) + a2 * a2 / (nneg - 1)), nan)
        pooled = ((npos - 1) * vp + (nneg - 1) * vn) / (npos + nneg - 2)
        okp = pooled > 0
        out[COHENS_D] = torch.where(okp, (mp - mn) / torch.sqrt(torch.where(okp, pooled, 1.0)), nan)
    else:
        out[T] = nan
        out[DF] = nan
        out[COHENS_D] = nan
    out[VALID] = 1.0

    # neurons with a non-finite activation: invalid (see docs/kernels.md)
    bad = ~finite
    if bool(bad.any()):
        out[:, bad] = float("nan")
        out[AUC, bad] = 0.5
        out[CONSISTENCY, bad] = 0.0
        out[VALID, bad] = 0.0
    return out.cpu().numpy()
