"""A small Sankey layout (concept → layer → concept family) drawn as inline SVG.

Nodes sit in three columns with heights proportional to the neurons flowing through
them; links are cubic Béziers whose stroke width is their weight. Links keep the
colour of the concept they come from, so a concept can be followed to the right.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from markupsafe import Markup, escape

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b",
           "#ff9da6", "#9d755d", "#bab0ac")


def concept_colors(concepts: Sequence[str]) -> dict[str, str]:
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(sorted(concepts))}


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def sankey_svg(flows: Iterable[tuple[str, int, str, int]], *, highlight: str | None = None,
               width: int = 900, height: int | None = None, node_w: int = 14,
               pad: int = 8, title: str = "") -> Markup:
    """flows: (concept, layer, family, n) rows. Returns an <svg> element as safe markup."""
    flows = [(str(c), int(layer), str(f), int(n)) for c, layer, f, n in flows if n and n > 0]
    if not flows:
        return Markup("")
    concepts = sorted({c for c, _, _, _ in flows})
    layers = sorted({layer for _, layer, _, _ in flows})
    fam_tot: dict[str, int] = defaultdict(int)
    for _, _, f, n in flows:
        fam_tot[f] += n
    families = sorted(fam_tot, key=lambda f: (f == "unlabelled", -fam_tot[f], f))
    colors = concept_colors(concepts)

    cols = [[("c", c) for c in concepts], [("l", layer) for layer in layers],
            [("f", f) for f in families]]
    value: dict[tuple, int] = defaultdict(int)
    for c, layer, f, n in flows:
        value[("c", c)] += n
        value[("l", layer)] += n
        value[("f", f)] += n
    total = sum(n for *_, n in flows)
    most = max(len(col) for col in cols)
    if height is None:
        height = max(320, min(900, 22 * most + 60))
    longest = max((len(f"{c} ({value[('c', c)]:,})") for c in concepts), default=10)
    top, bottom, left, right = 28, 12, max(120, 8 * longest), 150
    inner_h = height - top - bottom
    scale = (inner_h - pad * (most - 1)) / total
    xs = [left, left + (width - left - right - node_w) / 2, width - right - node_w]

    pos: dict[tuple, tuple[float, float, float]] = {}   # node -> (x, y, h)
    for ci, col in enumerate(cols):
        hs = [max(value[n] * scale, 2.0) for n in col]
        used = sum(hs) + pad * (len(col) - 1)
        y = top + (inner_h - used) / 2
        for node, h in zip(col, hs):
            pos[node] = (xs[ci], y, h)
            y += h + pad

    # link stacking: offsets at each node's out- and in-side, in the order of the other end
    out_off: dict[tuple, float] = defaultdict(float)

    def order_key(node):
        return pos[node][1]

    first = defaultdict(int)    # concept -> layer
    for c, layer, _, n in flows:
        first[(c, layer)] += n
    links: list[tuple[tuple, tuple, float, str, str]] = []
    for (c, layer), n in sorted(first.items(), key=lambda kv: (order_key(("c", kv[0][0])),
                                                                order_key(("l", kv[0][1])))):
        links.append((("c", c), ("l", layer), n, c, f"{c} → L{layer}: {n} neurons"))
    second = sorted(flows, key=lambda r: (order_key(("l", r[1])), order_key(("f", r[2])),
                                           concepts.index(r[0])))
    for c, layer, f, n in second:
        links.append((("l", layer), ("f", f), n, c, f"{c}: L{layer} → {f}: {n} neurons"))

    # in-side order: sort incoming by the source's y
    incoming: dict[tuple, list[int]] = defaultdict(list)
    for i, (s, t, *_rest) in enumerate(links):
        incoming[t].append(i)
    in_start: dict[int, float] = {}
    for t, idx in incoming.items():
        off = 0.0
        for i in sorted(idx, key=lambda i: (pos[links[i][0]][1], concepts.index(links[i][3]))):
            in_start[i] = off
            off += links[i][2] * scale

    parts: list[str] = []
    esc = escape
    parts.append(f'<svg xmlns="http://www.w3.org/2000/svg" class="sankey" role="img" '
                 f'viewBox="0 0 {width} {height}" width="100%" '
                 f'aria-label="{esc(title or "Sankey: concept to layer to family")}">')
    for i, (lbl, x) in enumerate(zip(("concept", "layer", "family"), xs)):
        anchor = ("end", "middle", "start")[i]
        tx = x + node_w if i == 0 else (x + node_w / 2 if i == 1 else x)
        parts.append(f'<text x="{_fmt(tx)}" y="14" class="sk-head" text-anchor="{anchor}">{lbl}</text>')
    for i, (s, t, n, c, tip) in enumerate(links):
        sx, sy, _ = pos[s]
        tx, ty, _ = pos[t]
        w = n * scale
        y0 = sy + out_off[s] + w / 2
        out_off[s] += w
        y1 = ty + in_start[i] + w / 2
        x0, x1 = sx + node_w, tx
        xm = (x0 + x1) / 2
        dim = highlight is not None and c != highlight
        op = 0.12 if dim else 0.45
        parts.append(
            f'<path class="sk-link" d="M{_fmt(x0)},{_fmt(y0)} C{_fmt(xm)},{_fmt(y0)} '
            f'{_fmt(xm)},{_fmt(y1)} {_fmt(x1)},{_fmt(y1)}" stroke="{colors[c]}" '
            f'stroke-width="{_fmt(max(w, 1.0))}" stroke-opacity="{op}" fill="none">'
            f'<title>{esc(tip)}</title></path>')
    for node, (x, y, h) in pos.items():
        kind, key = node
        fill = colors[key] if kind == "c" else ("#6b7280" if kind == "l" else "#374151")
        name = f"L{key}" if kind == "l" else str(key)
        parts.append(f'<rect class="sk-node" x="{_fmt(x)}" y="{_fmt(y)}" width="{node_w}" '
                     f'height="{_fmt(h)}" fill="{fill}" rx="2"><title>{esc(name)}: '
                     f'{value[node]} neurons</title></rect>')
        cy = y + h / 2 + 4
        if kind == "c":
            weight = ' font-weight="700"' if key == highlight else ""
            parts.append(f'<text x="{_fmt(x - 6)}" y="{_fmt(cy)}" text-anchor="end"{weight}>'
                         f'{esc(name)} ({value[node]})</text>')
        elif kind == "l":
            if h >= 9 or len(layers) <= 16:
                parts.append(f'<text x="{_fmt(x + node_w + 4)}" y="{_fmt(cy)}" class="sk-small">'
                             f'{esc(name)}</text>')
        else:
            parts.append(f'<text x="{_fmt(x + node_w + 6)}" y="{_fmt(cy)}">'
                         f'{esc(name)} ({value[node]})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
