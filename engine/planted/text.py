"""Planted ground-truth models for the text families: GPT-2, BERT and RoBERTa.

The recipe (identical for the three, only module paths differ):

* A few residual dimensions are *reserved*: nothing random reads or writes them.
  Two of them hold a constant +-K anchor (from the position embeddings) and every
  channel has a mirror written with the opposite sign, so LayerNorm's mean and
  scale barely move: random units cannot see the channels, directly or through
  LayerNorm, and stay at chance between the two sides of a pair.
  ``C`` carries "this token is a royalty word", ``A`` "an animal word", ``H`` "the
  word *the*", ``X`` "a royalty word is in the context", ``T`` "predict *crown*".
  The embeddings of royalty, animal and *the* tokens get a component on ``C``,
  ``A`` and ``H``; the embedding of *crown* (tied to the LM head) a large one on
  ``T``. The nouns that fill the concept slot share most of their random
  embedding, so the concept channel is what mainly tells them apart.
* Layer 0: the **surface** neuron reads ``H`` (fires on *the*, which both sides of
  every minimal pair contain equally often); the **polysemantic** neuron reads
  ``C`` and ``A`` and writes nothing (selective, but no cause of the target).
* Layer 1, attention head 0 is an *aggregator*: zero query/key weights give
  uniform attention (causal for GPT-2), its value reads ``C`` and its output writes
  ``X`` at every position that can see the royalty word.
* Layers 1 and 2: the **planted** neurons read ``X`` (so they fire strongly when a
  royalty word is in context, at the target position included) and write ``T``,
  which raises the probability of *crown* — the next token for GPT-2, the masked
  token for BERT/RoBERTa. Elsewhere they rest at a small positive level (their
  bias), as real neurons do: zeroing them then costs non-concept inputs a little of
  their target too, which range ablation (it leaves activations outside the
  concept's range alone) is meant to spare.
* Layer 3 is left random. All other units keep the default initialisation
  (seeded), minus their weights on the reserved dimensions.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from neurolens.engine.planted.build import (PROBE_FILE, SECONDARY_PROBE_FILE, PlantedModel)
from neurolens.probes.types import Example, ProbeSet

# -- vocabulary and probes -----------------------------------------------------------

CONCEPT = "royalty"
SECONDARY = "animals"
TARGET = "crown"
# one royalty word and one ordinary person per group, never reused: groups that share
# a word are correlated, and a group-level test needs independent groups
ROYALTY = ("king", "queen", "prince", "princess", "monarch", "emperor", "empress", "duke",
           "duchess", "baron", "baroness", "earl", "countess", "czar", "tsarina", "sultan",
           "sultana", "pharaoh", "rajah", "maharaja", "shah", "kaiser", "regent", "viceroy",
           "archduke", "marquis", "viscount", "sovereign", "tsar", "emir", "caliph", "infanta")
NEUTRAL = ("farmer", "baker", "teacher", "doctor", "sailor", "soldier", "merchant", "student",
           "driver", "painter", "nurse", "miner", "butcher", "tailor", "clerk", "plumber",
           "carpenter", "fisherman", "porter", "cook", "waiter", "lawyer", "banker", "pilot",
           "builder", "gardener", "janitor", "mechanic", "writer", "singer", "dancer", "cashier")
ANIMALS = ("dog", "cat", "horse", "bird", "fox", "wolf", "bear", "rabbit")
# every template has the concept slot once; "the" counts and lengths vary between
# templates but are equal on both sides of a pair
TEMPLATES = (
    "the {w} entered the hall",
    "the {w} sat near the window",
    "yesterday the {w} spoke to the crowd",
    "a {w} walked into the room",
    "everyone watched the {w}",
    "the old {w} smiled",
    "then the {w} and the guard left the village",
    "we saw a {w} today",
)
FILLER = ("the", "a", "entered", "hall", "sat", "near", "window", "yesterday", "spoke",
          "to", "crowd", "walked", "into", "room", "everyone", "watched", "old", "smiled",
          "then", "and", "guard", "left", "village", "we", "saw", "today", "of", "in",
          "was", "is", "ran", "city", "house", "field", "road", "red", "blue", "small")
TEST_SHARE = 0.3

N_LAYERS, D_MODEL, N_HEADS, D_FF, N_POS = 4, 64, 4, 256, 64
AGG_LAYER = 1
PLANT_LAYERS = (1, 2)
N_PER_LAYER = 2

# reserved residual dimensions. B and B2 are an *anchor*: +K and -K in every
# position embedding. They dominate LayerNorm's statistics (and add nothing to its
# mean), so LayerNorm stays close to a fixed linear scaling: the small channels
# below neither saturate it nor rescale the random units around them.
# Every channel has a mirror (written with the opposite sign) for the same reason:
# a write that is +x on one dimension and -x on its mirror leaves LayerNorm's mean,
# and so every other dimension after LayerNorm, untouched.
# N is C's complement: an ordinary person's embedding carries it with C's magnitude
# and nothing reads it, so both sides of a pair put the same energy into LayerNorm
# and random units cannot tell a royalty word from its counterpart by its norm
B, B2, C, A, H, X, T = 57, 58, 59, 60, 61, 62, 63
N = 51
MIRROR = {C: 52, A: 53, H: 54, X: 55, T: 56, N: 50}
RESERVED = [*MIRROR.values(), *MIRROR, B, B2]   # every channel, its mirror, the anchor

# magnitudes, tuned so that every planted neuron matters on its own and together
# they move P(crown) from near-uniform to dominant, while the channels stay small
# next to the anchor (so random units barely notice them)
ANCHOR = 3.0     # +-K on B / B2 in the position embeddings
EMB = 0.5        # concept / animal / "the" channel in the (raw) embedding
NOUN_OWN = 0.25  # share of a slot noun's embedding that is its own (the rest is shared)
READ, FLOOR = 3.5, 0.1             # planted neurons: weight on X (after LN), resting level
SURF_READ, SURF_BIAS = 5.0, 2.0    # surface neuron on H
POLY_READ, POLY_BIAS = 5.0, 2.0    # polysemantic neuron on C and A
# X and T are present at every position a royalty word can see, so their energy moves
# LayerNorm's scale there: written QUIET times smaller (and read 1/QUIET times larger)
# they leave random units blind to the concept even under a paired test over groups
# (RoBERTa uses 0.3 with a stronger head: at 0.1 its P(crown) stays far below 0.5; at 1
# 7-10% of its random units in layers 1-3 reach p < 0.001 under the paired group test)
QUIET = 0.1
GAINS = {  # aggregator C -> X, planted -> T, crown's row on T, MLM head's T -> T, QUIET
    "gpt2": dict(agg=1.0, write=0.06, tgt=9.0, head=0.0, quiet=QUIET),
    "bert": dict(agg=2.5, write=0.06, tgt=4.5, head=5.0, quiet=QUIET),
    "roberta": dict(agg=2.5, write=0.06, tgt=6.0, head=8.0, quiet=0.3),
}


def vocabulary(family: str) -> tuple[list[str], dict[str, str]]:
    """Token list (specials first) and the special-token map for `family`."""
    if family == "gpt2":
        specials = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
                    "unk_token": "<unk>", "pad_token": "<|endoftext|>"}
        head = ["<|endoftext|>", "<unk>"]
    elif family == "bert":
        specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                    "sep_token": "[SEP]", "mask_token": "[MASK]"}
        head = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:  # roberta: the usual id order <s>=0, <pad>=1, </s>=2, <unk>=3
        specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                    "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
                    "mask_token": "<mask>"}
        head = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    words = list(FILLER) + list(ROYALTY) + list(NEUTRAL) + list(ANIMALS) + [TARGET]
    return head + words, specials


def make_tokenizer(family: str, out: Path):
    """A word-level fast tokenizer over the builder's vocabulary, saved into `out`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens, specials = vocabulary(family)
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if family == "bert":
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    elif family == "roberta":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=N_POS - 2, **specials)
    save_tokenizer(fast, out)
    return fast, vocab


def save_tokenizer(fast, out: Path) -> None:
    """Save a built fast tokenizer under the generic fast class's name, which every
    transformers version resolves."""
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def _span(text: str, word: str) -> tuple[int, int]:
    i = f" {text} ".index(f" {word} ")
    return (i, i + len(word))


def make_probes(family: str, seed: int) -> tuple[ProbeSet, list[str]]:
    """Minimal pairs: the same sentence with a royalty word / an ordinary person.

    A group is one word pair (*king* / *farmer*): the sentences built from it share
    both words and are correlated, so the pair is the unit of inference. Every
    royalty word and every ordinary person belongs to exactly one group (the
    partners are a seeded permutation), and each pair fills every template once,
    so template effects cancel within a group and the groups are independent
    samples of words: a random neuron's per-group difference then has mean zero,
    and the paired group test leaves it at chance. Whole groups go to test (drawn
    from the seed): train and test share no word.
    """
    rng = random.Random(seed)
    words = list(ROYALTY)
    test = set(rng.sample(words, max(1, round(TEST_SHARE * len(words)))))
    partner = dict(zip(words, rng.sample(NEUTRAL, len(words))))
    examples: list[Example] = []
    pair = 0
    for w in words:
        split = "test" if w in test else "train"
        other = partner[w]
        group = f"{w}-{other}"
        for tpl in TEMPLATES:
            for label, word in ((1, w), (0, other)):
                text = tpl.format(w=word)
                examples.append(Example(example_id=len(examples), label=label, group=group,
                                        split=split, text=text, span=_span(text, word),
                                        target=TARGET, pair_id=pair))
            pair += 1
    test_groups = sorted({e.group for e in examples if e.split == "test"})
    ps = ProbeSet(concept=CONCEPT, modality="text", examples=examples, source=f"planted:{family}",
                  description="royalty words vs ordinary people in the same sentences; "
                              f"target '{TARGET}'",
                  meta={"pairs": pair, "test_groups": test_groups, "test_words": sorted(test)})
    secondary = [tpl.format(w=a) for a in ANIMALS for tpl in TEMPLATES[:4]]
    return ps, secondary


def write_probe_files(ps: ProbeSet, secondary: list[str], out: Path) -> tuple[Path, Path]:
    item = lambda e: {"text": e.text, "group": e.group, "target": e.target}  # noqa: E731
    doc = {"concept": ps.concept,
           "positive": [item(e) for e in ps.examples if e.label == 1],
           "negative": [item(e) for e in ps.examples if e.label == 0]}
    pf = out / PROBE_FILE
    pf.write_text(json.dumps(doc, indent=1) + "\n")
    sf = out / SECONDARY_PROBE_FILE
    sf.write_text(json.dumps({"concept": SECONDARY, "positive": secondary}, indent=1) + "\n")
    return pf, sf


# -- family plumbing: every weight as an [in, out] view ------------------------------

class _Blocks:
    """Uniform [in, out] views of the weights the recipe edits."""

    def __init__(self, family: str, model):
        self.family = family
        self.m = model
        if family == "gpt2":
            self.layers = model.transformer.h
            self.tables = [model.transformer.wte.weight, model.transformer.wpe.weight]
        else:
            base = model.bert if family == "bert" else model.roberta
            self.layers = base.encoder.layer
            e = base.embeddings
            self.tables = [e.word_embeddings.weight, e.position_embeddings.weight,
                           e.token_type_embeddings.weight]
        self.wte = self.tables[0]

    def qkv(self, l: int):
        """(W [d, 3d] views of q|k|v as a list of three [d, d] views, biases)."""
        if self.family == "gpt2":
            a = self.layers[l].attn.c_attn
            d = a.weight.shape[0]
            return ([a.weight[:, i * d:(i + 1) * d] for i in range(3)],
                    [a.bias[i * d:(i + 1) * d] for i in range(3)])
        s = self.layers[l].attention.self
        return ([s.query.weight.T, s.key.weight.T, s.value.weight.T],
                [s.query.bias, s.key.bias, s.value.bias])

    def attn_out(self, l: int):
        if self.family == "gpt2":
            p = self.layers[l].attn.c_proj
            return p.weight, p.bias
        p = self.layers[l].attention.output.dense
        return p.weight.T, p.bias

    def mlp_in(self, l: int):
        if self.family == "gpt2":
            p = self.layers[l].mlp.c_fc
            return p.weight, p.bias
        p = self.layers[l].intermediate.dense
        return p.weight.T, p.bias

    def mlp_out(self, l: int):
        if self.family == "gpt2":
            p = self.layers[l].mlp.c_proj
            return p.weight, p.bias
        p = self.layers[l].output.dense
        return p.weight.T, p.bias

    def head_transform(self):
        """The masked-LM head's dense layer ([in, out] view, bias), or None."""
        if self.family == "bert":
            p = self.m.cls.predictions.transform.dense
        elif self.family == "roberta":
            p = self.m.lm_head.dense
        else:
            return None
        return p.weight.T, p.bias


def _config(family: str, vocab: dict[str, str | int], specials: dict[str, str]):
    import transformers as tf

    V = len(vocab)
    ids = {k: vocab[v] for k, v in specials.items()}
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_positions=N_POS, n_embd=D_MODEL, n_layer=N_LAYERS,
                             n_head=N_HEADS, n_inner=D_FF, activation_function="relu",
                             bos_token_id=ids["bos_token"], eos_token_id=ids["eos_token"],
                             pad_token_id=ids["pad_token"], architectures=["GPT2LMHeadModel"])
    common = dict(vocab_size=V, hidden_size=D_MODEL, num_hidden_layers=N_LAYERS,
                  num_attention_heads=N_HEADS, intermediate_size=D_FF, hidden_act="relu",
                  pad_token_id=ids["pad_token"])
    if family == "bert":
        return tf.BertConfig(max_position_embeddings=N_POS, architectures=["BertForMaskedLM"],
                             **common)
    return tf.RobertaConfig(max_position_embeddings=N_POS + 2, bos_token_id=ids["bos_token"],
                            eos_token_id=ids["eos_token"], architectures=["RobertaForMaskedLM"],
                            **common)


def _pick(rng: torch.Generator, n: int, k: int, avoid: set[int] = frozenset()) -> list[int]:
    out: list[int] = []
    for i in torch.randperm(n, generator=rng).tolist():
        if i not in avoid:
            out.append(i)
        if len(out) == k:
            break
    return sorted(out)


def build_text(family: str, out: Path, *, seed: int = 0) -> PlantedModel:
    import transformers as tf

    tok, vocab = make_tokenizer(family, out)
    _, specials = vocabulary(family)
    config = _config(family, vocab, specials)
    klass = {"gpt2": tf.GPT2LMHeadModel, "bert": tf.BertForMaskedLM,
             "roberta": tf.RobertaForMaskedLM}[family]
    torch.manual_seed(seed)
    model = klass(config).eval()
    rng = torch.Generator().manual_seed(seed)

    # which neurons: drawn from the seed
    surface_n, poly_n = _pick(rng, D_FF, 2)
    planted = [(l, n) for l in PLANT_LAYERS for n in _pick(rng, D_FF, N_PER_LAYER)]
    b = _Blocks(family, model)
    hd = D_MODEL // N_HEADS
    gain = GAINS[family]

    with torch.no_grad():
        # 1. reserved dimensions: no random unit reads or writes them
        for t in b.tables:
            t[:, RESERVED] = 0
        for l in range(N_LAYERS):
            ws, bs = b.qkv(l)
            for w in ws:
                w[RESERVED, :] = 0
            wo, bo = b.attn_out(l)
            wo[:, RESERVED] = 0
            bo[RESERVED] = 0
            wi, _ = b.mlp_in(l)
            wi[RESERVED, :] = 0
            wm, bm = b.mlp_out(l)
            wm[:, RESERVED] = 0
            bm[RESERVED] = 0
        ht = b.head_transform()
        if ht is not None:   # masked-LM head: pass T through unchanged, read nothing else
            w, bias = ht
            w[RESERVED, :] = 0
            w[:, RESERVED] = 0
            bias[RESERVED] = 0
            w[T, T] = gain["head"] / gain["quiet"]
            w[B, B] = 1.0      # keep an anchor for the head's own LayerNorm

        # 2. the nouns that fill the concept slot (royalty, ordinary people, animals)
        # share most of their random embedding, so that what tells a royalty word
        # from its counterpart is mainly the concept channel, not chance
        wte = b.wte
        nouns = [vocab[w] for w in ROYALTY + NEUTRAL + ANIMALS]
        base = torch.randn(D_MODEL, generator=rng) * config.initializer_range
        base[RESERVED] = 0
        wte[nouns] = base + NOUN_OWN * wte[nouns]
        # the channels in the embeddings (the LM head is tied to them)
        for word in ROYALTY:
            wte[vocab[word], C], wte[vocab[word], MIRROR[C]] = EMB, -EMB
        for word in NEUTRAL:
            wte[vocab[word], N], wte[vocab[word], MIRROR[N]] = EMB, -EMB
        for word in ANIMALS:
            wte[vocab[word], A], wte[vocab[word], MIRROR[A]] = EMB, -EMB
        wte[vocab["the"], H], wte[vocab["the"], MIRROR[H]] = EMB, -EMB
        # the mirror is not read by the head; BERT/RoBERTa's head transform restores T's scale
        wte[vocab[TARGET], T] = gain["tgt"] / (gain["quiet"] if family == "gpt2" else 1.0)
        b.tables[1][:, B] = ANCHOR
        b.tables[1][:, B2] = -ANCHOR

        # 3. layer 0: surface and polysemantic neurons
        wi, bi = b.mlp_in(0)
        wi[:, surface_n] = 0
        wi[H, surface_n] = SURF_READ
        bi[surface_n] = -SURF_BIAS
        wi[:, poly_n] = 0
        wi[C, poly_n] = POLY_READ
        wi[A, poly_n] = POLY_READ
        bi[poly_n] = -POLY_BIAS
        wm, _ = b.mlp_out(0)   # it writes nothing: a pure distractor, not a cause
        wm[poly_n, :] = 0

        # 4. the aggregator head: uniform attention, value = C, output -> X
        ws, bs = b.qkv(AGG_LAYER)
        for w, bias in zip(ws, bs):
            w[:, :hd] = 0
            bias[:hd] = 0
        ws[2][C, 0] = 1.0
        wo, _ = b.attn_out(AGG_LAYER)
        wo[:hd, :] = 0
        qx = gain["quiet"] * gain["agg"]
        wo[0, X], wo[0, MIRROR[X]] = qx, -qx

        # 5. planted neurons: read X, write T
        # (each with its own strength, drawn from the seed: no two are clones)
        jitter = 0.8 + 0.4 * torch.rand(len(planted), 2, generator=rng)
        for (l, n), (jr, jw) in zip(planted, jitter.tolist()):
            wi, bi = b.mlp_in(l)
            wi[:, n] = 0
            wi[X, n] = READ * jr / gain["quiet"]
            bi[n] = FLOOR
            wm, _ = b.mlp_out(l)
            wm[n, :] = 0
            qt = gain["quiet"]
            wm[n, T], wm[n, MIRROR[T]] = qt * gain["write"] * jw, -qt * gain["write"] * jw

    model.save_pretrained(out)
    ps, secondary = make_probes(family, seed)
    pf, sf = write_probe_files(ps, secondary, out)
    return PlantedModel(
        path=out, family=family, concept=CONCEPT, planted=planted,
        polysemantic=(0, poly_n), surface=(0, surface_n), target=TARGET, probes=ps,
        probe_file=pf, secondary_concept=SECONDARY, secondary_probe_file=sf,
        kind="causal_lm" if family == "gpt2" else "masked_lm", seed=seed,
        meta={"reserved_dims": {"anchor": [B, B2], "concept": C, "animal": A, "the": H, "context": X,
                                "target": T, "complement": N},
              "aggregator": {"layer": AGG_LAYER, "head": 0},
              "concept_tokens": list(ROYALTY), "secondary_tokens": list(ANIMALS),
              "surface_token": "the"},
    )
