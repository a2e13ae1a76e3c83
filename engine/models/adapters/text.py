"""What the transformer families share: tokenising, length-sorted batches, pooled
final features and reading a target's probability from an LM head."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from neurolens.engine.models.adapters.base import Adapter, Batch, Kind, ModelError
from neurolens.probes.types import Example
from torch import nn

_ARCH_KIND: dict[str, Kind] = {"LMHeadModel": "causal_lm", "ForCausalLM": "causal_lm",
                               "ForMaskedLM": "masked_lm", "ForPreTraining": "masked_lm"}


def kind_from_config(config: Any) -> Kind:
    """An LM head when the checkpoint declares one, otherwise a bare encoder."""
    for arch in getattr(config, "architectures", None) or []:
        for suffix, kind in _ARCH_KIND.items():
            if arch.endswith(suffix):
                return kind
    return "encoder"


class TextAdapter(Adapter):
    """Base for GPT-2, BERT and RoBERTa: the families differ only in module paths."""

    modality = "text"
    max_length: ClassVar[int] = 128
    head_classes: ClassVar[dict[str, str]] = {}   # kind -> transformers class name

    # subclasses name these
    def base(self) -> nn.Module:
        """The model without its head."""
        raise NotImplementedError

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, D] final hidden states -> [B, V] logits, through the LM head."""
        raise NotImplementedError

    @classmethod
    def load(cls, ref: str, *, name: str, device: torch.device, dtype: torch.dtype,
             local_only: bool, placement: dict | None = None) -> Adapter:
        """`placement`: accelerate's big-model kwargs (`engine/models/placement.py`); the model is
        then dispatched over its devices instead of moved to `device`."""
        import transformers as tf

        config = tf.AutoConfig.from_pretrained(ref, local_files_only=local_only)
        kind = kind_from_config(config)
        klass = getattr(tf, cls.head_classes.get(kind, "AutoModel"))
        model = klass.from_pretrained(ref, local_files_only=local_only, torch_dtype=dtype,
                                      **(placement or {}))
        tok = tf.AutoTokenizer.from_pretrained(ref, local_files_only=local_only, use_fast=True)
        if not getattr(tok, "is_fast", False):
            raise ModelError(f"{name}: a fast tokenizer is needed (tokenizer.json)")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        tok.padding_side = "right"
        model.eval()
        # nothing here decodes: a key/value cache only costs memory, and the ablation's
        # replicas must not meet one
        model.config.use_cache = False
        if placement:
            from neurolens.engine.models.placement import settle

            device = settle(model, placement)
        else:
            model.to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, tok, name=name, ref=ref, kind=kind, device=device, dtype=dtype)

    # -- batches ---------------------------------------------------------------
    def _texts(self, examples: Sequence[Example], with_targets: bool) -> list[str]:
        texts = [e.text or "" for e in examples]
        if with_targets and self.kind == "masked_lm":
            m = self.processor.mask_token
            texts = [f"{t} {m}" for t in texts]
        return texts

    def _target_ids(self, examples: Sequence[Example]) -> np.ndarray:
        """[n] the first token the target adds when it continues the text: tokenise text
        and text + " " + target (one batch call for all) and take the first id where
        they part. The first id of " " + target alone is wrong wherever a tokenizer
        marks word starts itself (SentencePiece's "▁": " crown" alone begins with a
        lone "▁") or merges across the join. -1 where there is no target."""
        ids = np.full(len(examples), -1, dtype=np.int64)
        have = np.array([i for i, e in enumerate(examples) if e.target], dtype=np.int64)
        if have.size == 0:
            return ids
        texts = [examples[i].text or "" for i in have]
        conts = [f"{t} {examples[i].target.strip()}" for t, i in zip(texts, have)]
        enc = self.processor(texts + conts, add_special_tokens=False)["input_ids"]
        a, b = _padded(enc[:len(have)], -1), _padded(enc[len(have):], -2)
        w = max(a.shape[1], b.shape[1]) + 1
        a = np.pad(a, ((0, 0), (0, w - a.shape[1])), constant_values=-1)
        b = np.pad(b, ((0, 0), (0, w - b.shape[1])), constant_values=-2)
        first = np.argmax(a != b, axis=1)          # pads differ (-1 / -2): always found
        new = b[np.arange(len(have)), first]
        ids[have] = np.where(new >= 0, new, -1)
        return ids

    def batches(self, examples: Sequence[Example], batch_size: int, *,
                with_targets: bool = False) -> Iterator[Batch]:
        n = len(examples)
        if n == 0:
            return
        tok = self.processor
        enc = tok(self._texts(examples, with_targets), add_special_tokens=True, truncation=True,
                  max_length=self.max_length, return_offsets_mapping=True)
        lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=n)
        T = int(lengths.max())
        ids = np.full((n, T), tok.pad_token_id, dtype=np.int64)
        offs = np.zeros((n, T, 2), dtype=np.int64)
        valid = np.arange(T)[None, :] < lengths[:, None]
        ids[valid] = np.concatenate(enc["input_ids"])
        offs[valid] = np.concatenate([np.asarray(o, dtype=np.int64).reshape(-1, 2)
                                      for o in enc["offset_mapping"]])
        span = np.array([e.span if e.span else (-1, -1) for e in examples], dtype=np.int64)
        # a token belongs to the concept word when its characters overlap the span
        cmask = valid & (offs[..., 1] > span[:, None, 0]) & (offs[..., 0] < span[:, None, 1]) \
            & (offs[..., 1] > offs[..., 0])
        labels = np.array([e.label for e in examples], dtype=np.int64)
        tgt = self._target_ids(examples) if with_targets else None
        if with_targets and self.kind == "masked_lm":
            tpos = np.argmax(ids == tok.mask_token_id, axis=1)
        else:
            tpos = lengths - 1
        order = np.argsort(lengths, kind="stable")
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            t = int(lengths[idx].max())
            mask = torch.from_numpy(valid[idx, :t].astype(np.int64))
            yield Batch(
                inputs={"input_ids": torch.from_numpy(ids[idx, :t]), "attention_mask": mask},
                index=torch.from_numpy(idx), labels=torch.from_numpy(labels[idx]), mask=mask,
                concept_mask=torch.from_numpy(cmask[idx, :t]),
                target_ids=None if tgt is None else torch.from_numpy(tgt[idx]),
                target_pos=torch.from_numpy(tpos[idx]), n_tokens=int(lengths[idx].sum()),
            )

    # -- reading the model -------------------------------------------------------
    def _hidden(self, batch: Batch) -> torch.Tensor:
        return self.base()(**batch.inputs).last_hidden_state

    def features(self, batch: Batch) -> torch.Tensor:
        h = self._hidden(batch).float()
        w = batch.mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)

    def target_logprobs(self, batch: Batch) -> torch.Tensor:
        if not self.has_lm_head:
            return super().target_logprobs(batch)
        h = self._hidden(batch)
        rows = torch.arange(h.shape[0], device=h.device)
        return self.head_target_logprobs(h[rows, batch.target_pos], batch.target_ids.clamp_min(0))

    def head_target_logprobs(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[B] log p(targets) from final hidden states x [B, D]: all logits, then log-softmax
        (families with a large vocabulary take only the log-sum-exp, `engine/models/head.py`)."""
        lp = torch.log_softmax(self.head_logits(x).float(), dim=-1)
        return lp[torch.arange(x.shape[0], device=x.device), targets]


def _padded(seqs: Sequence[Sequence[int]], fill: int) -> np.ndarray:
    """Ragged id lists as one [n, max_len] array, `fill` after each list's end."""
    lengths = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
    out = np.full((len(seqs), max(1, int(lengths.max(initial=0)))), fill, dtype=np.int64)
    valid = np.arange(out.shape[1])[None, :] < lengths[:, None]
    if valid.any():
        out[valid] = np.concatenate([np.asarray(x, dtype=np.int64) for x in seqs if len(x)])
    return out
