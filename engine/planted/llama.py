"""A planted ground-truth Llama: gated-MLP neurons where we know they are.

Same probes, vocabulary and story as the GPT-2 family (engine/planted/text.py), on a
Llama block (RMSNorm, rotary attention, MLP ``down(silu(gate(x)) * up(x))``):

* Reserved residual dimensions that nothing random reads or writes. RMSNorm has no
  mean to keep, so no mirrors are needed; a constant anchor ``B`` in every token
  embedding dominates its scale, so RMSNorm stays close to a fixed scaling, and a
  weight on ``B`` acts as the bias Llama's linear layers lack. ``C`` "a royalty
  word", ``A`` "an animal word", ``H`` "the word *the*", ``X`` "a royalty word is in
  the context", ``T`` "predict *crown*" (the untied LM head's row of *crown* reads it).
* Layer 0: the **surface** neuron (gate reads ``H``) and the **polysemantic** one
  (gate reads ``C`` and ``A``, writes nothing); their up rows read the anchor, so
  the neuron is silu(gate) times a constant.
* Layer 1, head 0 aggregates: zero query and key rows give uniform causal attention,
  its value reads ``C`` and it writes ``X``.
* Layers 1 and 2: one **planted** neuron each, whose gate *and* up rows read ``X``:
  the product fires when a royalty word is in context and writes ``T`` through
  down_proj, raising P(crown) at the next token. Off the concept it rests at a small
  positive level.
* Layer 2: the **decoy**. Its gate reads ``X`` more strongly than the planted ones,
  so silu(gate) (``act_fn``'s output) is the most selective unit of the model, but
  its up row is zero: the neuron down_proj reads, act(gate) * up, is exactly 0.
  A tool that hooks ``act_fn`` ranks it first; at the true site its selectivity is 0.
"""
from __future__ import annotations

from pathlib import Path

import torch

from neurolens.engine.planted.build import PlantedModel
from neurolens.engine.planted.text import (save_tokenizer, ANIMALS, CONCEPT, FILLER, NEUTRAL, NOUN_OWN, ROYALTY,
                                           SECONDARY, TARGET, _pick, make_probes, write_probe_files)

N_LAYERS, D_MODEL, N_HEADS, D_FF, N_POS = 4, 64, 4, 256, 64
AGG_LAYER = 1
PLANT_LAYERS = (1, 2)
DECOY_LAYER = 2

# N is C's complement, on every ordinary person and read by nothing: both sides of a
# pair then carry the same energy into RMSNorm (see planted_text)
B, C, A, H, X, T, N = 58, 59, 60, 61, 62, 63, 57
RESERVED = [B, C, A, H, X, T, N]

ANCHOR = 3.0                      # B in every token embedding
NORM = D_MODEL ** 0.5             # B after RMSNorm (the anchor dominates its scale)
EMB = 0.5                         # C / A / H in the embeddings
# X and T are written small and read with large weights: RMSNorm's scale then barely
# moves with them, so random units after them see no trace of the concept (even
# under a paired test over independent groups, which sees a scale change of 1e-3)
QUIET = 0.1
AGG = 0.4 * QUIET                 # aggregator head: C -> X
READ, UP = 20.0 / QUIET, 10.0 / QUIET  # planted: gate and up on X
REST_GATE, REST_UP = 1.0, 0.1     # planted: resting offsets
WRITE, TGT = 0.01 * QUIET, 12.0 / QUIET   # planted -> T; crown's LM-head row on T
DECOY_READ = 30.0 / QUIET
SURF_READ, SURF_BIAS = 5.0, 2.0
POLY_READ, POLY_BIAS = 5.0, 2.0
SPECIALS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"}


def make_tokenizer(out: Path):
    """A word-level fast tokenizer with Llama's specials and a <s> prefix, saved in `out`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(FILLER) + list(ROYALTY) + list(NEUTRAL) + list(ANIMALS) + [TARGET]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=N_POS, **SPECIALS)
    save_tokenizer(fast, out)
    return fast, vocab


def build_llama(out: Path, *, seed: int = 0) -> PlantedModel:
    import transformers as tf

    _, vocab = make_tokenizer(out)
    config = tf.LlamaConfig(
        vocab_size=len(vocab), hidden_size=D_MODEL, intermediate_size=D_FF,
        num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS,
        max_position_embeddings=N_POS, hidden_act="silu", rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
        pad_token_id=vocab["</s>"], architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(config).eval()
    rng = torch.Generator().manual_seed(seed)
    surface_n, poly_n = _pick(rng, D_FF, 2)
    planted = [(l, _pick(rng, D_FF, 1)[0]) for l in PLANT_LAYERS]
    decoy = (DECOY_LAYER, _pick(rng, D_FF, 1, avoid={n for l, n in planted if l == DECOY_LAYER})[0])
    layers = model.model.layers
    hd = D_MODEL // N_HEADS
    wte, head = model.model.embed_tokens.weight, model.lm_head.weight

    with torch.no_grad():
        # 1. reserved dimensions: no random unit reads (input columns) or writes (output rows)
        wte[:, RESERVED] = 0
        head[:, RESERVED] = 0
        for blk in layers:
            for lin in (blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj,
                        blk.mlp.gate_proj, blk.mlp.up_proj):
                lin.weight[:, RESERVED] = 0
            for lin in (blk.self_attn.o_proj, blk.mlp.down_proj):
                lin.weight[RESERVED, :] = 0

        # 2. embeddings: shared noun base (as for GPT-2), the channels, the anchor
        nouns = [vocab[w] for w in ROYALTY + NEUTRAL + ANIMALS]
        base = torch.randn(D_MODEL, generator=rng) * config.initializer_range
        base[RESERVED] = 0
        wte[nouns] = base + NOUN_OWN * wte[nouns]
        for word in ROYALTY:
            wte[vocab[word], C] = EMB
        for word in NEUTRAL:
            wte[vocab[word], N] = EMB
        for word in ANIMALS:
            wte[vocab[word], A] = EMB
        wte[vocab["the"], H] = EMB
        wte[:, B] = ANCHOR
        head[vocab[TARGET], T] = TGT

        # 3. layer 0: surface and polysemantic neurons, silu(gate) times a constant up
        mlp = layers[0].mlp
        for n, reads, w, bias in ((surface_n, (H,), SURF_READ, SURF_BIAS),
                                  (poly_n, (C, A), POLY_READ, POLY_BIAS)):
            mlp.gate_proj.weight[n] = 0
            mlp.gate_proj.weight[n, list(reads)] = w
            mlp.gate_proj.weight[n, B] = -bias / NORM
            mlp.up_proj.weight[n] = 0
            mlp.up_proj.weight[n, B] = 1.0 / NORM
        mlp.down_proj.weight[:, poly_n] = 0      # a pure distractor, no cause

        # 4. the aggregator head: uniform causal attention, value = C, output -> X
        att = layers[AGG_LAYER].self_attn
        att.q_proj.weight[:hd] = 0
        att.k_proj.weight[:hd] = 0
        att.v_proj.weight[:hd] = 0
        att.v_proj.weight[0, C] = 1.0
        att.o_proj.weight[:, :hd] = 0
        att.o_proj.weight[X, 0] = AGG

        # 5. planted neurons: gate and up both read X, the product writes T
        jitter = 0.8 + 0.4 * torch.rand(len(planted), 2, generator=rng)
        for (l, n), (jr, jw) in zip(planted, jitter.tolist()):
            mlp = layers[l].mlp
            mlp.gate_proj.weight[n] = 0
            mlp.gate_proj.weight[n, X] = READ * jr
            mlp.gate_proj.weight[n, B] = REST_GATE / NORM
            mlp.up_proj.weight[n] = 0
            mlp.up_proj.weight[n, X] = UP
            mlp.up_proj.weight[n, B] = REST_UP / NORM
            mlp.down_proj.weight[:, n] = 0
            mlp.down_proj.weight[T, n] = WRITE * jw

        # 6. the decoy: act(gate) fires on the concept, the product is silent
        l, n = decoy
        mlp = layers[l].mlp
        mlp.gate_proj.weight[n] = 0
        mlp.gate_proj.weight[n, X] = DECOY_READ
        mlp.up_proj.weight[n] = 0
        mlp.down_proj.weight[:, n] = 0
        mlp.down_proj.weight[T, n] = WRITE

    model.save_pretrained(out)
    ps, secondary = make_probes("llama", seed)
    pf, sf = write_probe_files(ps, secondary, out)
    return PlantedModel(
        path=out, family="llama", concept=CONCEPT, planted=planted, polysemantic=(0, poly_n),
        surface=(0, surface_n), target=TARGET, probes=ps, probe_file=pf,
        secondary_concept=SECONDARY, secondary_probe_file=sf, kind="causal_lm", seed=seed,
        meta={"decoys": [list(decoy)],
              "reserved_dims": {"anchor": B, "concept": C, "animal": A, "the": H, "context": X,
                                "target": T, "complement": N},
              "aggregator": {"layer": AGG_LAYER, "head": 0},
              "site": "input of model.layers[l].mlp.down_proj: silu(gate) * up",
              "concept_tokens": list(ROYALTY), "secondary_tokens": list(ANIMALS),
              "surface_token": "the"},
    )
