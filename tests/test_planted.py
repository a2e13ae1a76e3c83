"""The planted ground-truth models, checked with plain transformers and torch hooks
(nothing of the engine): they reload as real checkpoints, the planted neurons are
selective and causal, the distractors behave as documented, and builds are
deterministic."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurolens.engine.planted.build import FAMILIES, build_planted, read_planted

TEXT = ("gpt2", "bert", "roberta", "llama")
CAUSAL = ("gpt2", "llama")
N_RANDOM_SETS = 10


# -- plain-transformers plumbing -----------------------------------------------------

class Loaded:
    """A planted checkpoint loaded with the Auto classes, run with forward hooks."""

    def __init__(self, pm):
        import transformers as tf

        self.pm = pm
        self.vision = pm.family == "resnet"
        if self.vision:
            self.model = tf.AutoModelForImageClassification.from_pretrained(pm.path).eval()
            self.proc = tf.AutoImageProcessor.from_pretrained(pm.path)
            self.target_id = self.model.config.label2id[pm.target]
        else:
            auto = tf.AutoModelForCausalLM if pm.family in CAUSAL else tf.AutoModelForMaskedLM
            self.model = auto.from_pretrained(pm.path).eval()
            self.tok = tf.AutoTokenizer.from_pretrained(pm.path)
            self.target_id = self.tok.convert_tokens_to_ids(pm.target)

    def module(self, layer: int) -> torch.nn.Module:
        m = self.model
        if self.vision:
            return m.resnet.encoder.stages[layer].layers[0]
        if self.pm.family == "gpt2":
            return m.transformer.h[layer].mlp.act
        if self.pm.family == "llama":   # the neuron act(gate) * up is down_proj's input
            return m.model.layers[layer].mlp.down_proj
        return getattr(m, self.pm.family).encoder.layer[layer].intermediate

    def n_neurons(self, layer: int) -> int:
        c = self.model.config
        if self.vision:
            return c.hidden_sizes[layer]
        return c.n_inner if self.pm.family == "gpt2" else c.intermediate_size

    def register(self, layer: int, fn):
        """fn(acts) -> acts at the site: a module's output, or (Llama) its input."""
        mod = self.module(layer)
        if self.pm.family == "llama":
            return mod.register_forward_pre_hook(lambda _m, args: (fn(args[0]),))
        return mod.register_forward_hook(lambda _m, _a, out: fn(out))

    def run(self, items: list[str], ablate=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(P(target) per item, {layer: pooled activations [B, N]}), with the given
        (layer, neuron) units zeroed. Text is mean-pooled over real tokens; images
        over space. Text items for masked LMs get ' <mask>' appended."""
        pooled: dict[int, torch.Tensor] = {}
        by_layer: dict[int, list[int]] = {}
        for l, n in ablate:
            by_layer.setdefault(l, []).append(n)
        mask = None

        def hook(layer):
            def fn(out):
                out = out.clone()
                if layer in by_layer:   # channels are dim 1 of [B, C, H, W], last of [B, T, N]
                    if self.vision:
                        out[:, by_layer[layer]] = 0
                    else:
                        out[..., by_layer[layer]] = 0
                if self.vision:
                    pooled[layer] = out.mean(dim=(2, 3))
                else:
                    w = mask.unsqueeze(-1).to(out.dtype)
                    pooled[layer] = (out * w).sum(1) / w.sum(1)
                return out
            return fn

        handles = [self.register(l, hook(l)) for l in range(4)]
        try:
            with torch.no_grad():
                if self.vision:
                    px = self._pixels(tuple(items))
                    probs = self.model(pixel_values=px).logits.softmax(-1)[:, self.target_id]
                else:
                    texts = items
                    if self.pm.family not in CAUSAL:
                        texts = [f"{t} {self.tok.mask_token}" for t in items]
                    enc = self.tok(texts, return_tensors="pt", padding=True)
                    mask = enc["attention_mask"]
                    logits = self.model(**enc).logits
                    rows = torch.arange(len(items))
                    if self.pm.family in CAUSAL:
                        pos = mask.sum(1) - 1
                    else:
                        pos = (enc["input_ids"] == self.tok.mask_token_id).int().argmax(1)
                    probs = logits[rows, pos].softmax(-1)[:, self.target_id]
        finally:
            for h in handles:
                h.remove()
        return probs, pooled

    @functools.lru_cache(maxsize=8)  # noqa: B019 (one Loaded per family, kept for the module)
    def _pixels(self, items: tuple[str, ...]) -> torch.Tensor:
        from PIL import Image

        return self.proc([Image.open(p).convert("RGB") for p in items],
                         return_tensors="pt")["pixel_values"]

    def items(self, label: int, split: str | None = None) -> list[str]:
        return [e.image if self.vision else e.text for e in self.pm.probes.examples
                if e.label == label and (split is None or e.split == split)]

    def secondary_items(self) -> list[str]:
        doc = json.loads(self.pm.secondary_probe_file.read_text())
        if self.vision:
            return [str(p) for p in sorted(Path(doc["positive_dir"]).glob("*.png"))]
        return list(doc["positive"])


def decoys(pm) -> set[tuple[int, int]]:
    return {tuple(d) for d in pm.meta.get("decoys", [])}


def auc(pos, neg) -> float:
    a, b = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def loaded(planted_factory):
    cache: dict[str, Loaded] = {}

    def get(family: str) -> Loaded:
        if family not in cache:
            cache[family] = Loaded(planted_factory(family))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def acts(loaded):
    """Per family: base run on positives and negatives (cached)."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            L = loaded(family)
            cache[family] = (L.run(L.items(1)), L.run(L.items(0)))
        return cache[family]

    return get


# -- the checkpoint --------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_reloads_as_a_real_checkpoint(family, loaded):
    import transformers as tf

    L = loaded(family)
    pm = L.pm
    cfg = tf.AutoConfig.from_pretrained(pm.path)
    head = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "bert": "BertForMaskedLM",
            "roberta": "RobertaForMaskedLM", "resnet": "ResNetForImageClassification"}[family]
    assert cfg.architectures == [head]
    assert type(L.model).__name__ == head
    if family == "resnet":
        assert cfg.id2label[1] == pm.target == pm.concept
        big = np.zeros((224, 224, 3), dtype=np.uint8)
        px = L.proc(big, return_tensors="pt")["pixel_values"]
        assert tuple(px.shape[-2:]) == (64, 64)   # hub-sized inputs are resized
    else:
        tok = L.tok
        assert tok.is_fast
        assert tok.pad_token is not None and tok.unk_token is not None
        if family not in CAUSAL:
            assert tok.mask_token is not None and tok.cls_token is not None and tok.sep_token is not None
        e = pm.probes.examples[0]
        enc = tok(e.text, return_offsets_mapping=True)
        assert tok.unk_token_id not in enc["input_ids"]
        # the concept span is exactly one token, found through the offsets
        hit = [i for i, (s, t) in enumerate(enc["offset_mapping"]) if s < e.span[1] and t > e.span[0] and t > s]
        assert len(hit) == 1
        assert tok.convert_ids_to_tokens(enc["input_ids"][hit[0]]) == e.text[e.span[0]:e.span[1]]
        # every probe word and the target is in the vocabulary, as a single token
        words = {w for x in pm.probes.examples for w in x.text.split()} | {pm.target}
        ids = tok(sorted(" " + w for w in words), add_special_tokens=False)["input_ids"]
        assert all(len(i) == 1 and i[0] != tok.unk_token_id for i in ids)
        assert L.target_id != tok.unk_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_json_and_probe_file_match(family, planted_factory):
    pm = planted_factory(family)
    doc = read_planted(pm.path)
    assert doc["family"] == family
    assert [tuple(x) for x in doc["planted"]] == pm.planted
    assert tuple(doc["polysemantic"]) == pm.polysemantic
    assert tuple(doc["surface"]) == pm.surface
    assert doc["concept"] == pm.concept and doc["target"] == pm.target
    assert doc["probe_sha"] == pm.probes.sha
    assert pm.probe_file == pm.path / doc["probe_file"]
    specials = set(pm.planted) | {pm.polysemantic, pm.surface}
    assert len(specials) == len(pm.planted) + 2
    assert len(pm.planted_layers) >= 2

    ps = pm.probes
    assert ps.n_pos == ps.n_neg >= 60
    # group-wise split: a group (and so a pair) never straddles train and test
    split_of: dict[str, set] = {}
    for e in ps.examples:
        split_of.setdefault(e.group, set()).add(e.split)
    assert all(len(s) == 1 for s in split_of.values())
    for sp in ("train", "test"):
        assert {e.label for e in ps.split(sp)} == {0, 1}
    pairs: dict[int, list] = {}
    for e in ps.examples:
        pairs.setdefault(e.pair_id, []).append(e)
    assert all(sorted(x.label for x in p) == [0, 1] for p in pairs.values())

    probe = json.loads(pm.probe_file.read_text())
    assert probe["concept"] == pm.concept
    if family == "resnet":
        pos = sorted(Path(probe["positive_dir"]).rglob("*.png"))   # one sub-folder per group
        neg = sorted(Path(probe["negative_dir"]).rglob("*.png"))
        assert len(pos) == ps.n_pos and len(neg) == ps.n_neg
        assert {str(p) for p in pos} == {e.image for e in ps.examples if e.label == 1}
    else:
        assert [x["text"] for x in probe["positive"]] == [e.text for e in ps.examples if e.label == 1]
        assert [x["text"] for x in probe["negative"]] == [e.text for e in ps.examples if e.label == 0]
        assert all(x["target"] == pm.target and x["group"] for x in probe["positive"] + probe["negative"])
        for e in ps.examples:   # minimal pairs: one word differs
            other = next(x for x in pairs[e.pair_id] if x is not e)
            diff = [(a, b) for a, b in zip(e.text.split(), other.text.split()) if a != b]
            assert len(diff) == 1 and len(e.text.split()) == len(other.text.split())


@pytest.mark.parametrize("family", TEXT)
def test_text_groups_are_independent_word_pairs(family, loaded):
    """Every royalty word and every ordinary person fills the slot of exactly one group
    (groups that share a word are correlated), train and test share no word, every
    royalty token carries the concept channel and every ordinary one its complement."""
    from safetensors.torch import load_file

    from neurolens.engine.planted import llama as pl
    from neurolens.engine.planted import text as pt

    L = loaded(family)
    ps = L.pm.probes
    words: dict[str, dict[int, set[str]]] = {}
    for e in ps.examples:
        w = e.text[e.span[0]:e.span[1]]
        words.setdefault(e.group, {0: set(), 1: set()})[e.label].add(w)
    assert len(words) >= 24
    pos = [next(iter(v[1])) for v in words.values()]
    neg = [next(iter(v[0])) for v in words.values()]
    assert all(len(v[0]) == len(v[1]) == 1 for v in words.values())
    assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg)
    assert set(pos) == set(pt.ROYALTY) and not set(neg) & set(pt.ROYALTY)
    split = {e.group: e.split for e in ps.examples}
    used = {sp: {w for g, v in words.items() if split[g] == sp for w in v[0] | v[1]}
            for sp in ("train", "test")}
    assert not used["train"] & used["test"] and len({g for g in split if split[g] == "train"}) >= 16
    emb = load_file(L.pm.path / "model.safetensors")
    wte = next(v for k, v in emb.items() if k.endswith(("wte.weight", "word_embeddings.weight",
                                                         "embed_tokens.weight")))
    ids = lambda ws: L.tok.convert_tokens_to_ids(list(ws))  # noqa: E731
    c, n = (pl.C, pl.N) if family == "llama" else (pt.C, pt.N)
    assert L.tok.unk_token_id not in ids(pos + neg)
    assert bool((wte[ids(pos), c] > 0.4).all()) and bool((wte[ids(pos), n] == 0).all())
    assert bool((wte[ids(neg), n] > 0.4).all()) and bool((wte[ids(neg), c] == 0).all())


# -- selectivity -------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_selectivity_of_planted_and_distractors(family, loaded, acts):
    L = loaded(family)
    pm = L.pm
    (_, pos), (_, neg) = acts(family)
    for l, n in pm.planted:
        assert auc(pos[l][:, n], neg[l][:, n]) == 1.0, (l, n)
        p_, n_ = pos[l][:, n], neg[l][:, n]
        # text planted units rest at a small level off the concept; far above it on it
        assert p_.mean() > 5 * max(n_.mean().item(), 0.01)
        assert p_.mean() - n_.mean() > 20 * n_.std()
    # the surface neuron is active, but not selective between the two sides of the pairs
    sl, sn = pm.surface
    assert pos[sl][:, sn].mean() > 0.1
    assert abs(auc(pos[sl][:, sn], neg[sl][:, sn]) - 0.5) < 0.1
    assert abs(pos[sl][:, sn].mean() - neg[sl][:, sn].mean()) < 0.02 * pos[sl][:, sn].mean()
    # the polysemantic neuron fires on the concept and on the second concept
    pl, pn = pm.polysemantic
    assert auc(pos[pl][:, pn], neg[pl][:, pn]) > 0.95
    _, sec = L.run(L.secondary_items())
    on_second = sec[pl][:, pn].mean()
    assert on_second > 0.3 * pos[pl][:, pn].mean()
    assert on_second > 5 * max(neg[pl][:, pn].mean().item(), 0.01)
    # ...which the planted neurons do not
    for l, n in pm.planted:
        assert sec[l][:, n].mean() < 0.2 * pos[l][:, n].mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_random_neurons_are_not_selective(family, loaded, acts):
    """Only the hand-set units separate the pairs: random ones stay at chance."""
    from scipy.stats import ttest_ind

    pm = loaded(family).pm
    (_, pos), (_, neg) = acts(family)
    special = set(pm.planted) | {pm.polysemantic, pm.surface} | decoys(pm)
    for l in range(4):
        keep = [n for n in range(pos[l].shape[1]) if (l, n) not in special]
        a, b = pos[l][:, keep].numpy(), neg[l][:, keep].numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            p = ttest_ind(a, b, equal_var=False).pvalue
        assert np.mean(np.nan_to_num(p, nan=1.0) < 0.01) < 0.05, l


@pytest.mark.parametrize("family", FAMILIES)
def test_random_neurons_not_significant_under_the_group_test(family, loaded, acts):
    """The paired group test (one-sample t over per-group differences, BH over every
    neuron of the model) finds the planted units and leaves the random ones at chance."""
    from scipy.stats import false_discovery_control, ttest_1samp

    pm = loaded(family).pm
    (_, pos), (_, neg) = acts(family)
    ex = pm.probes.examples
    gpos = [e.group for e in ex if e.label == 1]
    assert gpos == [e.group for e in ex if e.label == 0]   # items are pair-aligned
    groups = sorted(set(gpos))
    gi = np.array([groups.index(g) for g in gpos])
    p_all, keys = [], []
    for l in range(4):
        diff = pos[l].double().numpy() - neg[l].double().numpy()
        d = np.stack([diff[gi == g].mean(0) for g in range(len(groups))])
        with np.errstate(invalid="ignore", divide="ignore"):
            p_all.append(np.nan_to_num(ttest_1samp(d, 0.0).pvalue, nan=1.0))
        keys += [(l, n) for n in range(d.shape[1])]
    q = false_discovery_control(np.concatenate(p_all))
    special = set(pm.planted) | {pm.polysemantic, pm.surface} | decoys(pm)
    rnd = np.array([k not in special for k in keys])
    # text: none of ~1,000 random units; the ResNet's 166 random channels: 3 (1.8%) on all
    # 32 palettes here, none on the 22 train palettes the pipeline scores
    assert np.mean(q[rnd] < 0.05) <= (0.05 if family == "resnet" else 0.01), family
    for x in pm.planted:
        assert q[keys.index(x)] < 1e-6, x


# -- causality -------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_ablating_planted_lowers_confidence(family, loaded, acts):
    L = loaded(family)
    pm = L.pm
    (p_pos, _), (p_neg, _) = acts(family)
    assert p_pos.mean() > 0.5 and p_pos.mean() > 4 * p_neg.mean()

    # measured on the test split's concept examples, as the engine does
    items = L.items(1, "test")
    base = L.run(items)[0].mean().item()
    p_abl, _ = L.run(items, ablate=pm.planted)
    drop = (base - p_abl.mean().item()) / base
    assert drop > 0.6

    # each planted neuron matters on its own
    for ln in pm.planted:
        p1, _ = L.run(items, ablate=[ln])
        assert (base - p1.mean().item()) / base > 0.05, ln

    # random sets of the same size from the same layers do (much) less
    rng = np.random.default_rng(0)
    special = set(pm.planted) | {pm.polysemantic, pm.surface} | decoys(pm)
    rand_drops = []
    for _ in range(N_RANDOM_SETS):
        s: list[tuple[int, int]] = []
        for l, _ in pm.planted:
            while True:
                n = int(rng.integers(L.n_neurons(l)))
                if (l, n) not in special and (l, n) not in s:
                    break
            s.append((l, n))
        pr, _ = L.run(items, ablate=s)
        rand_drops.append((base - pr.mean().item()) / base)
    assert max(rand_drops) < drop / 3
    assert max(abs(d) for d in rand_drops) < 0.1


# -- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family, tmp_path, planted_factory):
    from safetensors.torch import load_file

    a = planted_factory(family)
    b = build_planted(family, tmp_path / "again", seed=0)
    c = build_planted(family, tmp_path / "other", seed=1)
    ha, hb, hc = (state_hash(load_file(x.path / "model.safetensors")) for x in (a, b, c))
    assert ha == hb
    assert hc != ha
    assert b.planted == a.planted and b.polysemantic == a.polysemantic
    if family == "resnet":   # image refs are paths inside each build: compare the pixels
        assert [Path(e.image).read_bytes() for e in a.probes.examples[:6]] == \
               [Path(e.image).read_bytes() for e in b.probes.examples[:6]]
    else:
        assert b.probes.sha == a.probes.sha
    assert (a.path / "model.safetensors").read_bytes() == (b.path / "model.safetensors").read_bytes()


def test_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        build_planted("vit", tmp_path)


# -- the gated decoy (Llama) -----------------------------------------------------------------

def test_llama_decoy_fires_at_act_fn_but_not_at_the_neuron(loaded, acts):
    """act_fn's output of the decoy separates the pairs perfectly (a tool reading it
    would rank the decoy), while act(gate) * up, down_proj's input, is exactly zero;
    the planted neurons' gate and up both read the concept."""
    L = loaded("llama")
    pm = L.pm
    (dl, dn), = decoys(pm)
    (_, pos), (_, neg) = acts("llama")
    assert float(pos[dl][:, dn].abs().max()) == 0.0 and float(neg[dl][:, dn].abs().max()) == 0.0
    gate: dict[str, torch.Tensor] = {}
    mlp = L.model.model.layers[dl].mlp
    for label in (1, 0):
        enc = L.tok(L.items(label), return_tensors="pt", padding=True)
        h = mlp.act_fn.register_forward_hook(lambda _m, _a, out: gate.__setitem__("g", out))
        try:
            with torch.no_grad():
                L.model(**enc)
        finally:
            h.remove()
        w = enc["attention_mask"].unsqueeze(-1).float()
        gate[label] = ((gate["g"] * w).sum(1) / w.sum(1))[:, dn]
    assert auc(gate[1], gate[0]) == 1.0
    assert gate[1].mean() > 1.0 and float(gate[0].abs().max()) < 1e-6
    for l, n in pm.planted:
        assert auc(pos[l][:, n], neg[l][:, n]) == 1.0


def test_llama_pipeline_ranks_planted_not_decoys(planted_factory, tmp_path):
    """Through the real pipeline: both planted neurons in the top 3; the decoy, the
    surface and (being uncaused) nothing else ranked above them; the decoy's
    selectivity at the true site is 0."""
    from neurolens.engine.models import registry
    from neurolens.pipeline import RunConfig, run
    from neurolens.store import Store, read_table

    pm = planted_factory("llama")
    adapter = registry.load(str(pm.path))
    assert adapter.neuron_site(1)[1] == "input"
    run(RunConfig(model=str(pm.path), out=str(tmp_path), report=False, batch_size=16),
        adapter=adapter, probes=pm.probes)
    sc = read_table(Store(tmp_path / "store"), "scores", {"model": adapter.name, "concept": pm.concept})
    sc = {(int(l), int(n)): (r, sel) for l, n, r, sel in zip(
        sc.column("layer").to_pylist(), sc.column("neuron").to_pylist(),
        sc.column("rank").to_pylist(), sc.column("selectivity").to_pylist())}
    for x in pm.planted:
        assert sc[x][0] is not None and sc[x][0] <= 3, (x, sc[x])
    for x in decoys(pm) | {pm.surface}:
        rank, _ = sc[x]
        assert rank is None or rank > 3 * len(pm.planted), (x, sc[x])
    (d,) = decoys(pm)
    assert sc[d][0] is None and abs(sc[d][1]) < 0.05
