"""Planted ground-truth ResNet: horizontal stripes -> the "stripes" class.

A small `ResNetForImageClassification` (stem 16 channels, one basic block per
stage with 16/32/64/64 channels, 64x64 inputs, labels ``other`` / ``stripes``).
Images have a period of 4 pixels; the stem's 7x7, stride-2 convolution is where
the hand-set filters live:

* ``h`` (two channels, gains differ): a horizontal-edge filter (rows ++ over --,
  four columns wide): fires on horizontal stripes, is exactly 0 on vertical
  stripes (each row of a window sums to the same value) and on checkerboards;
* ``c``: a 2x2-cell checkerboard filter, 0 on both kinds of stripes;
* ``b``: a 4x4 box filter (the mean brightness), with a positive bias.

Neurons are block outputs (blocks 0..3 = stages 0..3). The concept must pass
through every block (a ResNet has no path around a block output), so the planted
channels are a *chain*: two per block, each reading both of the previous block's
pair (shortcut 1x1 conv or, in block 0, the identity shortcut), and the
classifier's ``stripes`` logit reads block 3's pair (the ``other`` logit is a
constant 0, so P(stripes) is the sigmoid of the stripes logit). Every random
filter is symmetrised under transposition, so nothing random tells an image from
its transpose. Block 0 also holds the
**polysemantic** channel (horizontal stripes + checkerboards) and the **surface**
channel (brightness). Every other channel keeps the default initialisation, and
none of them reads or writes the hand-set channels.

Probes: each positive is a horizontal-stripes image, its negative the *same image
transposed* (vertical stripes: same colours, same brightness, same noise), so the
brightness channel is not selective and only orientation separates the two.
The group is the palette (32 of them, 3 pairs each, both labels in every group):
images of one palette are correlated, and 22 train palettes give a group-level
test the power to find the planted channels among all the others.
"""
from __future__ import annotations

import colorsys
import json
import random
from pathlib import Path

import numpy as np
import torch

from neurolens.engine.planted.build import PROBE_FILE, SECONDARY_PROBE_FILE, PlantedModel
from neurolens.probes.types import Example, ProbeSet

CONCEPT = "stripes"
SECONDARY = "checkerboard"
LABELS = ("other", "stripes")
SIZE = 64
PERIOD = 4
N_PALETTES = 32         # groups: one per palette (images of one palette are correlated)
N_PAIRS = 3 * N_PALETTES
N_SECONDARY = 24
TEST_SHARE = 0.3
HIDDEN = (16, 32, 64, 64)
STEM = 16
CLS_WEIGHT, CLS_BIAS = 1.2, 2.0
_HAND_PALETTES = (  # (darker colour, lighter colour), RGB in [0, 1]
    ((0.1, 0.1, 0.4), (0.9, 0.9, 0.6)), ((0.4, 0.1, 0.1), (0.9, 0.8, 0.7)),
    ((0.1, 0.3, 0.1), (0.8, 0.95, 0.8)), ((0.2, 0.2, 0.2), (0.95, 0.95, 0.95)),
    ((0.3, 0.1, 0.3), (0.9, 0.7, 0.9)), ((0.1, 0.3, 0.4), (0.7, 0.9, 0.95)),
    ((0.35, 0.25, 0.1), (0.95, 0.85, 0.5)), ((0.05, 0.05, 0.05), (0.75, 0.75, 0.75)),
)


def _hue_palettes(n: int) -> tuple:
    """`n` more palettes around the colour wheel, with the hand-picked ones' contrast
    (a dark saturated colour, a light pale one: about 0.55 apart in mean brightness)."""
    return tuple((colorsys.hsv_to_rgb(i / n, 0.65, 0.38), colorsys.hsv_to_rgb((i / n + 0.08) % 1, 0.25, 0.95))
                 for i in range(n))


PALETTES = _HAND_PALETTES + _hue_palettes(N_PALETTES - len(_HAND_PALETTES))


# -- images ------------------------------------------------------------------------

def _stripes(dark: np.ndarray, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal stripes, 2 rows dark / 2 rows light, grid-aligned, with mild noise."""
    rows = (np.arange(SIZE) % PERIOD) < PERIOD // 2
    img = np.where(rows[:, None, None], dark, light) * np.ones((SIZE, SIZE, 3))
    img = img + rng.uniform(-0.03, 0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _checker(dark: np.ndarray, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cell = (np.arange(SIZE) // (PERIOD // 2)) % 2
    on = (cell[:, None] + cell[None, :]) % 2 == 0
    img = np.where(on[..., None], dark, light)
    img = img + rng.uniform(-0.03, 0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _colours(pal: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d, l = (np.asarray(c) for c in PALETTES[pal])
    shade = rng.uniform(-0.08, 0.08, size=2)
    dark, light = np.clip(d + shade[0], 0, 1), np.clip(l + shade[1], 0, 1)
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def make_images(out: Path, seed: int) -> tuple[ProbeSet, dict[str, Path]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    dirs = {k: out / "probes" / k for k in ("stripes", "other", SECONDARY)}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    groups = [f"palette{p:02d}" for p in range(N_PALETTES)]
    test = set(random.Random(seed).sample(groups, max(1, round(TEST_SHARE * N_PALETTES))))
    examples: list[Example] = []
    for i in range(N_PAIRS):
        pal = i % N_PALETTES
        g = groups[pal]
        img = _stripes(*_colours(pal, rng), rng)
        # one sub-folder per palette on both sides: a probe file's loader reads it as the group
        for label, arr, d in ((1, img, dirs["stripes"]), (0, img.transpose(1, 0, 2), dirs["other"])):
            (d / g).mkdir(exist_ok=True)
            f = d / g / f"{i:03d}.png"
            Image.fromarray(np.ascontiguousarray(arr)).save(f)
            examples.append(Example(example_id=len(examples), label=label, group=g,
                                    split="test" if g in test else "train", image=str(f),
                                    target=CONCEPT, pair_id=i))
    for i in range(N_SECONDARY):
        arr = _checker(*_colours(i % N_PALETTES, rng), rng)
        Image.fromarray(arr).save(dirs[SECONDARY] / f"{i:03d}.png")
    ps = ProbeSet(concept=CONCEPT, modality="vision", examples=examples, source="planted:resnet",
                  description="horizontal stripes vs the same images transposed (vertical)",
                  meta={"pairs": N_PAIRS, "test_groups": sorted(test), "size": SIZE})
    return ps, dirs



def write_probe_files(dirs: dict[str, Path], out: Path) -> tuple[Path, Path]:
    """The probe files `neurolens run --probes` reads: folders of images, one sub-folder per group."""
    pf = out / PROBE_FILE
    pf.write_text(json.dumps({"concept": CONCEPT, "positive_dir": str(dirs["stripes"].resolve()),
                              "negative_dir": str(dirs["other"].resolve())}, indent=1) + "\n")
    sf = out / SECONDARY_PROBE_FILE
    sf.write_text(json.dumps({"concept": SECONDARY,
                              "positive_dir": str(dirs[SECONDARY].resolve())}, indent=1) + "\n")
    return pf, sf

# -- the model ---------------------------------------------------------------------

def _kernels() -> dict[str, torch.Tensor]:
    """7x7 stem filters (same on R, G, B); the 4x4 support sits at rows/cols 3..6,
    which at stride 2 lines up with the period-4 grid of the images."""
    s = torch.tensor([1.0, 1.0, -1.0, -1.0])
    k = {}
    h = torch.zeros(7, 7)
    h[3:7, 3:7] = s[:, None].expand(4, 4)
    k["h"] = h / 8
    c = torch.zeros(7, 7)
    c[3:7, 3:7] = s[:, None] * s[None, :]
    k["c"] = c / 8
    b = torch.zeros(7, 7)
    b[3:7, 3:7] = 1.0 / 16
    k["b"] = b
    return {n: v.expand(3, 7, 7) / 3 for n, v in k.items()}


def _identity_tap(conv: torch.nn.Conv2d, out_ch: int, in_chs: list[int], w: list[float]) -> None:
    conv.weight[out_ch] = 0
    kh, kw = conv.weight.shape[2:]
    for i, g in zip(in_chs, w):
        conv.weight[out_ch, i, kh // 2, kw // 2] = g


def build_resnet(out: Path, *, seed: int = 0) -> PlantedModel:
    import transformers as tf

    config = tf.ResNetConfig(num_channels=3, embedding_size=STEM, hidden_sizes=list(HIDDEN),
                             depths=[1, 1, 1, 1], layer_type="basic", hidden_act="relu",
                             num_labels=2, id2label=dict(enumerate(LABELS)),
                             label2id={l: i for i, l in enumerate(LABELS)},
                             architectures=["ResNetForImageClassification"])
    torch.manual_seed(seed)
    model = tf.ResNetForImageClassification(config).eval()
    rng = torch.Generator().manual_seed(seed)
    perm = lambda n: torch.randperm(n, generator=rng).tolist()  # noqa: E731

    # stem channels: h1, h2 (stripes), c (checker), b (brightness); block 0 has an
    # identity shortcut, so block-0 channels keep these indices
    h1, h2, c_ch, b_ch = perm(STEM)[:4]
    blocks = [model.resnet.encoder.stages[s].layers[0] for s in range(4)]
    chain = [[h1, h2]] + [perm(HIDDEN[s])[:2] for s in (1, 2, 3)]
    poly, surface = c_ch, b_ch
    special = [sorted(set(chain[0]) | {poly, surface})] + [sorted(chain[s]) for s in (1, 2, 3)]
    K = _kernels()
    gains = (0.75 + 0.5 * torch.rand(8, generator=rng)).tolist()

    with torch.no_grad():
        # every random filter is made symmetric under transposition, so the random
        # network cannot tell an image from its transpose: orientation (the concept,
        # given the transposed negatives) is carried by the hand-set channels alone
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size[0] > 1:
                mod.weight.copy_((mod.weight + mod.weight.transpose(-1, -2)) / 2)
        stem = model.resnet.embedder.embedder
        for ch, name, g in ((h1, "h", gains[0]), (h2, "h", -gains[1]), (c_ch, "c", 1.0),
                            (b_ch, "b", 1.0)):
            stem.convolution.weight[ch] = g * K[name]
        stem.normalization.bias[b_ch] = 2.0          # brightness stays positive: linear

        for s, blk in enumerate(blocks):
            conv1, conv2 = blk.layer[0].convolution, blk.layer[1].convolution
            bn2 = blk.layer[1].normalization
            prev = special[s - 1] if s else special[0]
            # random channels neither read nor write the hand-set ones
            if s:
                conv1.weight[:, prev] = 0
                blk.shortcut.convolution.weight[:, prev] = 0
            else:
                conv1.weight[:, special[0]] = 0
            conv2.weight[special[s]] = 0
            bn2.bias[special[s]] = 0
            if s:
                blk.shortcut.convolution.weight[special[s]] = 0
            # the chain: each planted channel reads both of the previous pair
            if s:
                for j, ch in enumerate(chain[s]):
                    g = gains[2 * s + j]
                    blk.shortcut.convolution.weight[ch, chain[s - 1], 0, 0] = g / 2
        # the polysemantic channel: checker (identity shortcut) + stripes (conv path)
        b0 = blocks[0]
        conv1, conv2 = b0.layer[0].convolution, b0.layer[1].convolution
        q = [i for i in perm(STEM) if i not in special[0]][0]   # a spare middle channel
        _identity_tap(conv1, q, [h1, h2], [1.0, 1.0])
        b0.layer[0].normalization.bias[q] = 0
        conv2.weight[:, q] = 0
        _identity_tap(conv2, poly, [q], [1.0])

        cls = model.classifier[1]
        # "other" is a constant reference logit, so P(stripes) = sigmoid(stripes logit)
        # and only the chain moves it
        cls.weight[0] = 0
        cls.weight[1, special[3]] = 0
        cls.weight[1, chain[3]] = CLS_WEIGHT
        cls.bias[:] = 0
        cls.bias[1] = -CLS_BIAS

    model.save_pretrained(out)
    # the PIL-backed class where transformers has one (no torchvision needed); it
    # saves itself as a plain ConvNextImageProcessor
    klass = getattr(tf, "ConvNextImageProcessorPil", None) or tf.ConvNextImageProcessor
    proc = klass(size={"shortest_edge": SIZE}, crop_pct=1.0,
                                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                     resample=2)
    proc.save_pretrained(out)

    ps, dirs = make_images(out, seed)
    pf, sf = write_probe_files(dirs, out)
    planted = [(s, ch) for s in range(4) for ch in chain[s]]
    return PlantedModel(
        path=out, family="resnet", concept=CONCEPT, planted=planted, polysemantic=(0, poly),
        surface=(0, surface), target=CONCEPT, probes=ps, probe_file=pf,
        secondary_concept=SECONDARY, secondary_probe_file=sf, kind="vision", seed=seed,
        meta={"labels": list(LABELS), "target_label_id": 1, "image_size": SIZE,
              "stem_channels": {"stripes": [h1, h2], "checker": c_ch, "brightness": b_ch},
              "middle_channel": q},
    )
