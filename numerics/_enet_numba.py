"""Logistic regression with an elastic-net penalty, by proximal Newton + coordinate descent.

The problem is sklearn's (``LogisticRegression(l1_ratio=rho, C=c)``) divided by ``c``::

    min_{w, b}  sum_i log(1 + exp(eta_i)) - y_i eta_i  +  lam2 / 2 |w|^2  +  lam1 |w|_1,
    eta = Z w + b,   lam1 = rho / c,   lam2 = (1 - rho) / c.

Why not saga: a saga epoch costs a pass over Z and the probe needs hundreds of them
(sklearn's own run stops at ``max_iter`` unconverged), plus a second of importing
scikit-learn. Proximal Newton (glmnet, newGLMNET) solves a weighted least-squares model
of the loss by coordinate descent over the few non-zero weights, so it converges in a
handful of outer steps to a far tighter tolerance. Each outer step is checked against
the full objective (Armijo backtracking), and the stop is the KKT condition of the
penalised problem, so the answer does not depend on the path taken to it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._numba_impl import _FM   # reassociation lets LLVM vectorise the dot products

W_MIN = 1e-5      # floor of the Newton weight p (1 - p), as glmnet
ARMIJO = 1e-2     # sufficient-decrease fraction of the line search


@njit(cache=True, inline="always", fastmath=_FM)
def _log1pexp(x):
    if x > 0:
        return x + np.log1p(np.exp(-x))
    return np.log1p(np.exp(x))


@njit(cache=True, fastmath=_FM)
def _objective(eta, y, w, lam1, lam2):
    f = 0.0
    for i in range(eta.shape[0]):
        f += _log1pexp(eta[i]) - y[i] * eta[i]
    a = 0.0
    q = 0.0
    for j in range(w.shape[0]):
        a += abs(w[j])
        q += w[j] * w[j]
    return f + lam1 * a + 0.5 * lam2 * q


@njit(cache=True, fastmath=_FM)
def _dot(z, j, r):
    s = 0.0
    for i in range(r.shape[0]):
        s += z[j, i] * r[i]
    return s


@njit(cache=True, fastmath=_FM)
def _kkt(zt, g, w, lam1, lam2):
    """Largest violation of the optimality conditions at (w, b), gradient g of the loss in eta."""
    k = zt.shape[0]
    v = abs(g.sum())                      # the intercept: sum of the loss gradient is zero
    for j in range(k):
        d = _dot(zt, j, g) + lam2 * w[j]
        if w[j] > 0:
            e = abs(d + lam1)
        elif w[j] < 0:
            e = abs(d - lam1)
        else:
            e = max(abs(d) - lam1, 0.0)
        v = max(v, e)
    return v


@njit(cache=True, fastmath=_FM)
def enet_logistic(zt, y, lam1, lam2, tol, max_outer, max_inner):
    """Weights and intercept; ``zt`` is [k, n] (each feature contiguous), ``y`` 0/1 float64.

    Returns (w, b, outer steps, final KKT violation). Converged when the violation is at
    most ``tol`` (in units of the summed loss gradient).
    """
    k, n = zt.shape
    w = np.zeros(k)
    m = min(max(y.mean(), 1e-12), 1 - 1e-12)
    b = np.log(m / (1.0 - m))
    eta = np.full(n, b)
    p = np.empty(n)
    g = np.empty(n)
    wt = np.empty(n)
    r = np.empty(n)
    dw = np.zeros(k)
    h = np.zeros(k)
    active = np.zeros(k, np.bool_)
    viol = np.inf
    outer = 0
    for outer in range(max_outer):
        for i in range(n):
            p[i] = 1.0 / (1.0 + np.exp(-eta[i]))
            g[i] = p[i] - y[i]
            wt[i] = max(p[i] * (1.0 - p[i]), W_MIN)
        viol = _kkt(zt, g, w, lam1, lam2)
        if viol <= tol:
            break
        # coordinate descent on the quadratic model: r = g + wt * deta, its gradient in eta
        for i in range(n):
            r[i] = g[i]
        dw[:] = 0.0
        db = 0.0
        sw = wt.sum()
        for j in range(k):
            s = 0.0
            for i in range(n):
                s += wt[i] * zt[j, i] * zt[j, i]
            h[j] = s
        # stop the inner loop when no step moves a gradient by more than a tenth of what is
        # left to reach: loose while far from the optimum, tol / 10 near it (newGLMNET)
        inner_tol = (0.1 * max(tol, 0.1 * viol)) ** 2 / (h.max() + lam2 + sw)
        full = True
        for _ in range(max_inner):
            change = 0.0
            grew = False
            for j in range(k):
                if not full and not active[j]:
                    continue
                v0 = w[j] + dw[j]
                c = _dot(zt, j, r)
                u = h[j] * v0 - c
                v = 0.0
                if u > lam1:
                    v = (u - lam1) / (h[j] + lam2)
                elif u < -lam1:
                    v = (u + lam1) / (h[j] + lam2)
                d = v - v0
                if d != 0.0:
                    dw[j] += d
                    for i in range(n):
                        r[i] += wt[i] * zt[j, i] * d
                    change = max(change, (h[j] + lam2) * d * d)
                    if not active[j]:
                        active[j] = True
                        grew = True
            d = -r.sum() / sw
            db += d
            for i in range(n):
                r[i] += wt[i] * d
            change = max(change, sw * d * d)
            if change <= inner_tol:
                if full and not grew:
                    break
                full = True           # the active set converged: check every coordinate once
            else:
                full = False
        # Armijo backtracking on the full objective along the Newton direction
        deta = np.empty(n)
        for i in range(n):
            deta[i] = (r[i] - g[i]) / wt[i]
        decrease = 0.0
        l1_new = 0.0
        l1_old = 0.0
        for j in range(k):
            decrease += lam2 * w[j] * dw[j]
            l1_new += abs(w[j] + dw[j])
            l1_old += abs(w[j])
        for i in range(n):
            decrease += g[i] * deta[i]
        decrease += lam1 * (l1_new - l1_old)
        f0 = _objective(eta, y, w, lam1, lam2)
        t = 1.0
        w_new, eta_new = w, eta
        for _ in range(30):
            w_new = w + t * dw
            eta_new = eta + t * deta
            if _objective(eta_new, y, w_new, lam1, lam2) <= f0 + ARMIJO * t * decrease:
                break
            t *= 0.5
        w = w_new
        eta = eta_new
        b += t * db
        for j in range(k):
            active[j] = w[j] != 0.0
    return w, b, outer, viol
