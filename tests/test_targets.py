"""Targets for any tokenizer: the target token is the first token the target adds when
it continues the text, for a SentencePiece-like (Llama) tokenizer, where the first id
of " " + target alone is a lone "▁", and for GPT-2's byte-level BPE."""
from __future__ import annotations

import numpy as np
import torch
from gated_fixtures import CORPUS, sentencepiece_like

from neurolens.engine.models.adapters.gated import GatedDecoderAdapter
from neurolens.engine.models.adapters.gpt2 import GPT2Adapter
from neurolens.probes.types import Example

CASES = [("the king wore a", "crown"), ("the queen spoke to the", "crowd"),
         ("we saw", "thrones"), ("", "king"), ("the farmer, then", "monarchs"),
         ("a doctor walked", "zebra"), ("no target here", "")]


def byte_level_bpe():
    """A GPT-2-style tokenizer: byte-level pre-tokenizer (spaces glued to the next
    word as "Ġ"), BPE merges trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def _examples() -> list[Example]:
    return [Example(example_id=i, label=1, group="g", split="test", text=t, target=tg or None)
            for i, (t, tg) in enumerate(CASES)]


def _reference(tok, text: str, target: str) -> int:
    """One example at a time: the first id where text + " " + target leaves text."""
    if not target:
        return -1
    a = tok(text, add_special_tokens=False)["input_ids"]
    b = tok(f"{text} {target}", add_special_tokens=False)["input_ids"]
    p = next(i for i in range(len(b)) if i >= len(a) or a[i] != b[i])
    return b[p]


def _adapter(klass, tok):
    return klass(torch.nn.Identity(), tok, name="t", ref="t", kind="causal_lm",
                 device=torch.device("cpu"), dtype=torch.float32)


def test_sentencepiece_targets_are_the_continuation():
    tok = sentencepiece_like()
    ids = _adapter(GatedDecoderAdapter, tok)._target_ids(_examples())
    want = [_reference(tok, t, tg) for t, tg in CASES]
    assert ids.tolist() == want
    assert tok.convert_ids_to_tokens(int(ids[0])) == "▁crown"
    # the old rule, the first id of " " + target, reads a lone "▁" here
    old = tok([" " + tg for _, tg in CASES if tg], add_special_tokens=False)["input_ids"]
    assert {tok.convert_ids_to_tokens(x[0]) for x in old} == {"▁"}
    assert ids[-1] == -1


def test_byte_level_targets_are_the_continuation():
    tok = byte_level_bpe()
    ids = _adapter(GPT2Adapter, tok)._target_ids(_examples())
    want = [_reference(tok, t, tg) for t, tg in CASES]
    assert ids.tolist() == want
    for i, (_, tg) in enumerate(CASES[:-1]):   # a word start: " " + the target's beginning
        piece = tok.decode([int(ids[i])])
        assert piece.startswith(" ") and f" {tg}".startswith(piece), (tg, piece)
    assert ids[-1] == -1


def test_targets_are_vectorised_over_many_examples():
    """Thousands of examples in one call (batch tokenisation), same answers as one by one."""
    tok = sentencepiece_like()
    rng = np.random.default_rng(0)
    words = " ".join(CORPUS).split()
    ex = [Example(example_id=i, label=1, group="g", split="test",
                  text=" ".join(rng.choice(words, int(rng.integers(0, 9)))), target=str(rng.choice(words)))
          for i in range(2000)]
    ids = _adapter(GatedDecoderAdapter, tok)._target_ids(ex)
    for i in rng.choice(len(ex), 50, replace=False):
        assert ids[i] == _reference(tok, ex[i].text, ex[i].target)
