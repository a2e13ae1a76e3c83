"""Tiny random gated-MLP decoders of every model type the gated adapter claims, with a
SentencePiece-like tokenizer trained here (no downloads): a few tens of thousands of
parameters, 2 layers, built and saved in well under a second each."""
from __future__ import annotations

import json
from pathlib import Path

import torch

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
               "phi3", "olmo2", "granite")

CORPUS = [
    "the king wore a crown in the hall", "the queen spoke to the crowd today",
    "a farmer walked into the old village", "we saw a small red house near the road",
    "the doctor and the teacher left the city", "yesterday the sailor sat by the window",
    "the prince smiled, and everyone watched him", "crowns and thrones belong to monarchs",
]
TEXTS = [
    "the king entered the hall",
    "a farmer walked into the old village near the road today",
    "we saw it",
    "the queen spoke to the crowd while the doctor sat by the window of the house",
    "then the prince left",
    "the teacher smiled",
]


def sentencepiece_like(out: Path | None = None):
    """A Llama-style fast tokenizer: BPE over "▁"-marked words, a <s> prefix, trained on
    CORPUS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    # as Llama's (legacy) tokenizer.json: "▁" prepended, spaces become "▁", so " crown"
    # alone is "▁▁crown" -> ["▁", "▁crown"]
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if out is not None:
        fast.save_pretrained(out)
        # name the generic fast class: the model type's own class may ignore tokenizer.json
        cfg = Path(out) / "tokenizer_config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()),
                                   "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    return fast


def tiny_config(model_type: str, vocab_size: int):
    import transformers as tf

    return tf.AutoConfig.for_model(
        model_type, vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=64, pad_token_id=2, bos_token_id=1, eos_token_id=2,
        initializer_range=0.3, sliding_window=4, tie_word_embeddings=False)


def build_tiny(model_type: str, out: Path, seed: int = 0) -> Path:
    """A saved checkpoint folder (config, weights, tokenizer) of `model_type`."""
    import transformers as tf

    tok = sentencepiece_like(out)
    torch.manual_seed(seed)
    # a few spare ids: some model types load their own tokenizer class, which may add one
    model = tf.AutoModelForCausalLM.from_config(tiny_config(model_type, len(tok) + 8)).eval()
    with torch.no_grad():   # norms away from 1 so that a missed norm is seen
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand_like(p))
    model.save_pretrained(out)     # writes architectures=[...ForCausalLM]
    return out
