"""The concept confidence M of DESIGN: what importance differentiates and ablation lowers.

With an LM head (or a classifier) and a target on every example, M is the probability
of the example's own target. Otherwise M is a logistic readout probe on the final
pooled representation, fitted on the train split: M = P(the example's true label).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from neurolens.engine.models.adapters.base import Adapter, Batch
from neurolens.probes.types import Example, in_split


class Confidence:
    def __init__(self, adapter: Adapter, examples: Sequence[Example], *, batch_size: int = 32,
                 force_readout: bool = False, fit: bool = True):
        """With ``fit=False`` a readout probe is left unfitted: the caller has the train
        features from a pass of its own and gives them to `fit_features`."""
        self.adapter = adapter
        self.mode = "target" if (not force_readout and adapter.has_target_head
                                 and examples and all(e.target for e in examples)) else "readout"
        self.with_targets = self.mode == "target"
        self.fitted = self.mode == "target"
        if self.mode == "readout" and fit:
            self._fit(in_split(examples, "train") or list(examples), batch_size)

    @property
    def metric(self) -> str:
        return "target_prob" if self.mode == "target" else "readout_prob"

    @torch.no_grad()
    def _fit(self, train: Sequence[Example], batch_size: int) -> None:
        feats, labels = [], []
        for b in self.adapter.batches(train, batch_size):
            feats.append(self.adapter.features(b.to(self.adapter.device)).cpu().double().numpy())
            labels.append(b.labels.numpy())
        self.fit_features(np.concatenate(feats), np.concatenate(labels))

    def fit_features(self, X: np.ndarray, y: np.ndarray) -> None:
        """Fit the readout probe on train features X [n, D] (float64) and labels y [n]."""
        from sklearn.linear_model import LogisticRegression

        mu, sd = X.mean(0), X.std(0) + 1e-6
        clf = LogisticRegression(C=1.0, max_iter=2000).fit((X - mu) / sd, y)
        w = clf.coef_[0] / sd
        dev = self.adapter.device
        self.w = torch.tensor(w, dtype=torch.float32, device=dev)
        self.b = torch.tensor(float(clf.intercept_[0] - (mu * w).sum()), dtype=torch.float32, device=dev)
        self.fitted = True

    def readout(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B] M from already computed features (differentiable through them)."""
        logit = features @ self.w + self.b
        sign = labels.to(logit.dtype) * 2 - 1
        return torch.nn.functional.logsigmoid(sign * logit).exp()

    def logprob(self, batch: Batch) -> torch.Tensor:
        """[B] log M, differentiable with respect to the model's activations."""
        if self.mode == "target":
            return self.adapter.target_logprobs(batch)
        logit = self.adapter.features(batch) @ self.w + self.b
        sign = batch.labels.to(logit.dtype) * 2 - 1
        return torch.nn.functional.logsigmoid(sign * logit)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.logprob(batch).exp()
