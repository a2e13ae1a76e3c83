"""A mergeable per-neuron summary of a corpus scan, in torch (CPU or CUDA), no I/O.

`ScanState` holds, for the N neurons of one layer, in memory bounded by k x N (never by
corpus length):

* the top-k excerpts by the neuron's maximum in the excerpt: value, excerpt id, position of
  the maximum (its first occurrence) and the activations of a W-token window around it;
  ties go to the lower excerpt id, so the result does not depend on arrival order;
* for gated MLPs the bottom-k by the minimum in the excerpt, the same way;
* two fixed-bin histograms (of every token, and of each excerpt's maximum) with per-neuron
  bins fixed before the scan (`edges_from`: from a calibration chunk that every shard reads
  alike), plus one underflow and one overflow bin. Bin of a value a:
  floor((a - lo) * scale) clipped to [-1, B], stored at +1. Integer counts: merged by sum;
* count, mean and M2 (float64, Chan et al.'s pairwise merge) and the count of active (> 0)
  tokens;
* interval samples: per (neuron, excerpt-max bin), the S excerpts with the smallest key
  h(excerpt, neuron), a fixed bijective 31-bit hash. Bottom-S by a fixed key is exact and
  order-independent under merging (a deterministic reservoir). The S smallest keys over all
  bins are a uniform random sample of excerpts, so "random" needs no extra state;
* for gated MLPs, counts of the four sign combinations of gate and up per neuron.

`merge(a, b)` is exact for every integer field and for top/bottom-k and samples; the float64
moments are merged by Chan's formula (equal to a one-pass reference to ~1e-12).

`update` has two backends that give the same state: on CPU tensors one fused numba pass per
batch (numerics/_scan_numba.py: each activation read once, top-k offers filtered against the
k-th entry, no sort); on CUDA the torch ops below (masked max, gather, bincount, sorts).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

MASK31 = (1 << 31) - 1
EMPTY_KEY = 1 << 62          # an unused sample slot sorts after every real key
EMPTY_EX = 1 << 62           # an unused top-k slot: after every real excerpt on ties


def neuron_hash(ex: torch.Tensor, neuron: torch.Tensor) -> torch.Tensor:
    """A 31-bit key per (excerpt, neuron); for a fixed neuron a bijection of excerpt ids
    below 2^31, so no two excerpts of one neuron share a key."""
    h = (ex.long() + neuron.long() * 0x9E3779B1) & MASK31
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & MASK31
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & MASK31
    return h ^ (h >> 16)


def edges_from(acts: torch.Tensor, valid: torch.Tensor | None = None, bins: int = 32
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron (lo, scale) from a calibration chunk [E, T, N]: its range, widened by half
    below and a whole range above (the top tail is what a dashboard reads)."""
    x = acts.float().reshape(-1, acts.shape[-1])
    if valid is not None:
        x = x[valid.reshape(-1)]
    mn, mx = x.amin(0), x.amax(0)
    span = (mx - mn).clamp_min(1e-3)
    lo = mn - 0.5 * span
    hi = mx + span
    return lo.contiguous(), (bins / (hi - lo)).contiguous()


@dataclass
class ScanState:
    """The scan summary of one layer's N neurons (see the module docstring)."""

    lo: torch.Tensor                      # [N] f32
    scale: torch.Tensor                   # [N] f32 bins per unit
    k: int = 20
    window: int = 16
    samples: int = 4
    gated: bool = False
    n_tokens: int = 0
    n_excerpts: int = 0
    mean: torch.Tensor = field(default=None)      # [N] f64
    m2: torch.Tensor = field(default=None)        # [N] f64
    active: torch.Tensor = field(default=None)    # [N] i64
    hist: torch.Tensor = field(default=None)      # [N, B+2] i64 over tokens
    hist_max: torch.Tensor = field(default=None)  # [N, B+2] i64 over excerpt maxima
    top_val: torch.Tensor = field(default=None)   # [k, N] f32, best first
    top_ex: torch.Tensor = field(default=None)    # [k, N] i64
    top_pos: torch.Tensor = field(default=None)   # [k, N] i64
    top_win: torch.Tensor = field(default=None)   # [k, W, N] f32 (NaN past the excerpt)
    top_start: torch.Tensor = field(default=None)  # [k, N] i64 first position of the window
    bot_val: torch.Tensor | None = None           # gated: the same for -min (value stored negated)
    bot_ex: torch.Tensor | None = None
    bot_pos: torch.Tensor | None = None
    bot_win: torch.Tensor | None = None
    bot_start: torch.Tensor | None = None
    s_key: torch.Tensor = field(default=None)     # [N*(B+2), S] i64, ascending
    s_val: torch.Tensor = field(default=None)     # [N*(B+2), S] f32 excerpt max
    s_ex: torch.Tensor = field(default=None)
    s_pos: torch.Tensor = field(default=None)
    signs: torch.Tensor | None = None             # gated: [N, 4] i64: (g<=0,u<=0),(g<=0,u>0),(g>0,u<=0),(g>0,u>0)
    _pending: list = field(default_factory=list, repr=False)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def empty(cls, lo: torch.Tensor, scale: torch.Tensor, *, k: int = 20, window: int = 16,
              samples: int = 4, gated: bool = False, bins: int | None = None) -> ScanState:
        dev, n = lo.device, lo.shape[0]
        nb = (bins if bins is not None else 32) + 2
        z = lambda *s, d=torch.int64: torch.zeros(*s, dtype=d, device=dev)  # noqa: E731
        f = lambda *s, v, d=torch.float32: torch.full(s, v, dtype=d, device=dev)  # noqa: E731
        st = cls(lo=lo.float(), scale=scale.float(), k=k, window=window, samples=samples, gated=gated,
                 mean=z(n, d=torch.float64), m2=z(n, d=torch.float64), active=z(n), hist=z(n, nb),
                 hist_max=z(n, nb), s_key=f(n * nb, samples, v=EMPTY_KEY, d=torch.int64),
                 s_val=f(n * nb, samples, v=float("nan")), s_ex=f(n * nb, samples, v=-1, d=torch.int64),
                 s_pos=f(n * nb, samples, v=-1, d=torch.int64))
        st.top_val, st.top_ex, st.top_pos, st.top_win, st.top_start = cls._empty_top(k, window, n, dev)
        if gated:
            st.bot_val, st.bot_ex, st.bot_pos, st.bot_win, st.bot_start = cls._empty_top(k, window, n, dev)
            st.signs = z(n, 4)
        return st

    @staticmethod
    def _empty_top(k: int, w: int, n: int, dev) -> tuple[torch.Tensor, ...]:
        return (torch.full((k, n), float("-inf"), device=dev),
                torch.full((k, n), EMPTY_EX, dtype=torch.int64, device=dev),
                torch.full((k, n), -1, dtype=torch.int64, device=dev),
                torch.full((k, w, n), float("nan"), device=dev),
                torch.full((k, n), -1, dtype=torch.int64, device=dev))

    @property
    def n_neurons(self) -> int:
        return int(self.lo.shape[0])

    @property
    def n_bins(self) -> int:
        """Bins of each histogram, the two outer bins included."""
        return int(self.hist.shape[1])

    def bin_of(self, x: torch.Tensor) -> torch.Tensor:
        """Histogram column (0 = underflow, B+1 = overflow) of values [..., N]."""
        b = torch.floor((x - self.lo) * self.scale)
        return (b.clamp(-1, self.n_bins - 2) + 1).long()

    # -- one batch --------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, acts: torch.Tensor, ex_ids: torch.Tensor, valid: torch.Tensor | None = None,
               gate: torch.Tensor | None = None, up: torch.Tensor | None = None, *,
               backend: str = "auto") -> None:
        """Fold in a batch of excerpts: acts [E, T, N] (any float dtype), excerpt ids [E],
        valid [E, T] (real tokens; default all), and for gated MLPs gate/up [E, T, N].

        backend: "numba" (one fused pass, CPU tensors), "torch" (any device) or "auto" (numba
        for a CPU tensor, torch otherwise). Both give the same state: identical integers, ids,
        positions and values; moments equal to a float64 reference."""
        if backend == "auto":
            backend = "numba" if acts.device.type == "cpu" else "torch"
        if backend == "numba":
            self._update_numba(acts, ex_ids, valid, gate, up)
        elif backend == "torch":
            self._update_torch(acts, ex_ids, valid, gate, up)
        else:
            raise ValueError(f"unknown scan backend {backend!r} (auto, numba, torch)")

    def _update_numba(self, acts: torch.Tensor, ex_ids: torch.Tensor, valid: torch.Tensor | None,
                      gate: torch.Tensor | None, up: torch.Tensor | None) -> None:
        from ._scan_numba import fold_batch

        if acts.device.type != "cpu" or self.lo.device.type != "cpu":
            raise ValueError("the numba scan backend reads CPU tensors only (use backend='torch')")
        self.flush()                                   # candidates left by the torch backend
        self._make_contiguous()
        x = acts.detach().float().contiguous().numpy()
        e_n, t_n, n = x.shape
        ok = (np.ones((e_n, t_n), dtype=np.bool_) if valid is None
              else valid.detach().cpu().bool().contiguous().numpy())
        ex = ex_ids.detach().cpu().long().contiguous().numpy()
        with_signs = self.gated and gate is not None and up is not None
        g = gate.detach().float().contiguous().numpy() if with_signs else x
        u = up.detach().float().contiguous().numpy() if with_signs else x
        top = [getattr(self, f"top_{f}").numpy() for f in ("val", "ex", "pos", "win", "start")]
        bot = [getattr(self, f"bot_{f}").numpy() for f in ("val", "ex", "pos", "win", "start")] \
            if self.gated else top
        signs = self.signs.numpy() if self.signs is not None else np.zeros((1, 4), dtype=np.int64)
        mb, m2b = np.empty(n), np.empty(n)
        has_shift = self.n_tokens > 0
        shift = self.mean.contiguous().numpy() if has_shift else mb
        m = int(fold_batch(x, ok, ex, self.lo.numpy(), self.scale.numpy(), self.gated, g, u, with_signs,
                           shift, has_shift, mb, m2b, self.active.numpy(), self.hist.numpy(),
                           self.hist_max.numpy(), *top, *bot,
                           self.s_key.numpy(), self.s_val.numpy(), self.s_ex.numpy(), self.s_pos.numpy(),
                           signs))
        self._merge_moments(m, torch.from_numpy(mb), torch.from_numpy(m2b))
        self.n_tokens += m
        self.n_excerpts += e_n

    def _make_contiguous(self) -> None:
        """The numba backend writes the state's tensors in place through numpy views."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and not v.is_contiguous():
                setattr(self, f.name, v.contiguous())

    def _update_torch(self, acts: torch.Tensor, ex_ids: torch.Tensor, valid: torch.Tensor | None,
                      gate: torch.Tensor | None, up: torch.Tensor | None) -> None:
        x = acts.float()
        e_n, t_n, n = x.shape
        dev = x.device
        ex_ids = ex_ids.to(dev).long()
        if valid is None:
            valid = torch.ones(e_n, t_n, dtype=torch.bool, device=dev)
        valid = valid.to(dev).bool()
        lengths = valid.sum(1)
        # moments (float64), active counts, token histogram
        xv = x[valid]                                        # [M, N]
        m = xv.shape[0]
        xd = xv.double()
        mb = xd.mean(0)
        m2b = ((xd - mb) ** 2).sum(0)
        self._merge_moments(m, mb, m2b)
        self.active += (xv > 0).sum(0)
        nb = self.n_bins
        off = torch.arange(n, device=dev) * nb
        self.hist += torch.bincount((self.bin_of(xv) + off).reshape(-1), minlength=n * nb).view(n, nb)
        # per-excerpt maxima (first position of the maximum) and their windows
        xm = x.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        emax, epos = xm.max(1)                               # [E, N]
        win, start = self._windows(x, epos, lengths)
        self.hist_max += torch.bincount((self.bin_of(emax) + off).reshape(-1),
                                        minlength=n * nb).view(n, nb)
        exb = ex_ids.unsqueeze(1).expand(e_n, n)
        self.top_val, self.top_ex, self.top_pos, self.top_win, self.top_start = _merge_top(
            (self.top_val, self.top_ex, self.top_pos, self.top_win, self.top_start),
            (emax, exb, epos, win, start), self.k)
        if self.gated:
            xn = x.masked_fill(~valid.unsqueeze(-1), float("inf"))
            emin, npos = xn.min(1)
            nwin, nstart = self._windows(x, npos, lengths)
            self.bot_val, self.bot_ex, self.bot_pos, self.bot_win, self.bot_start = _merge_top(
                (self.bot_val, self.bot_ex, self.bot_pos, self.bot_win, self.bot_start),
                (-emin, exb, npos, nwin, nstart), self.k)
            if gate is not None and up is not None:
                g = gate[valid] > 0
                u = up[valid] > 0
                for c, (gs, us) in enumerate(((False, False), (False, True), (True, False), (True, True))):
                    self.signs[:, c] += ((g == gs) & (u == us)).sum(0)
        # interval samples: candidates below their segment's current S-th key
        seg = (self.bin_of(emax) + off).reshape(-1)
        key = neuron_hash(exb, torch.arange(n, device=dev).unsqueeze(0).expand(e_n, n)).reshape(-1)
        keep = key < self.s_key[seg, -1]
        if bool(keep.any()):
            self._pending.append((seg[keep], key[keep], emax.reshape(-1)[keep], exb.reshape(-1)[keep],
                                  epos.reshape(-1)[keep]))
            if sum(p[0].numel() for p in self._pending) > max(self.s_key.numel(), 1 << 16):
                self.flush()
        self.n_tokens += m
        self.n_excerpts += e_n

    def _windows(self, x: torch.Tensor, pos: torch.Tensor, lengths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """[E, W, N] activations of the W-token window around each max, and its start [E, N]."""
        e_n, t_n, n = x.shape
        w = self.window
        top = (lengths - w).clamp_min(0).unsqueeze(1)       # [E, 1]
        start = torch.minimum((pos - w // 2).clamp_min(0), top)
        idx = start.unsqueeze(1) + torch.arange(w, device=x.device).view(1, w, 1)   # [E, W, N]
        out = torch.gather(x, 1, idx.clamp_max(t_n - 1))
        return out.masked_fill(idx >= lengths.view(e_n, 1, 1), float("nan")), start

    def _merge_moments(self, nb: int, mb: torch.Tensor, m2b: torch.Tensor) -> None:
        na = self.n_tokens
        if nb == 0:
            return
        if na == 0:
            self.mean, self.m2 = mb.clone(), m2b.clone()
            return
        n = na + nb
        d = mb - self.mean
        self.mean = self.mean + d * (nb / n)
        self.m2 = self.m2 + m2b + d * d * (na * nb / n)

    # -- samples ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Fold pending sample candidates into the per-segment bottom-S (exact)."""
        if not self._pending:
            return
        nseg, s = self.s_key.shape
        filled = self.s_key < EMPTY_KEY
        segs = torch.arange(nseg, device=self.s_key.device).unsqueeze(1).expand(nseg, s)[filled]
        parts = [(segs, self.s_key[filled], self.s_val[filled], self.s_ex[filled], self.s_pos[filled])]
        parts += self._pending
        self._pending = []
        seg, key, val, ex, pos = (torch.cat([p[i] for p in parts]) for i in range(5))
        order = torch.argsort(seg * (1 << 31) + key)        # keys are unique within a segment
        seg, key, val, ex, pos = seg[order], key[order], val[order], ex[order], pos[order]
        rank = torch.arange(seg.numel(), device=seg.device) - torch.searchsorted(seg, seg)
        ok = rank < s
        seg, rank = seg[ok], rank[ok]
        self.s_key.fill_(EMPTY_KEY)
        self.s_val.fill_(float("nan"))
        self.s_ex.fill_(-1)
        self.s_pos.fill_(-1)
        self.s_key[seg, rank] = key[ok]
        self.s_val[seg, rank] = val[ok]
        self.s_ex[seg, rank] = ex[ok]
        self.s_pos[seg, rank] = pos[ok]

    # -- combining ---------------------------------------------------------------------------
    def merge(self, other: ScanState) -> ScanState:
        """A new state equal to scanning both parts' excerpts (disjoint excerpt ids)."""
        a = self.copy()
        a.merge_(other.copy())
        return a

    def merge_(self, other: ScanState) -> ScanState:
        """`merge` in place: this state becomes the merged one, without a copy of either (a
        scan that merges shard after shard keeps two states alive, not four). `other` is read,
        its pending samples folded in first."""
        a, b = self, other
        if (a.k, a.window, a.samples, a.gated, a.n_bins) != (b.k, b.window, b.samples, b.gated, b.n_bins) \
                or not torch.equal(a.lo, b.lo) or not torch.equal(a.scale, b.scale):
            raise ValueError("scan states with different settings or bins cannot be merged")
        a._merge_moments_state(b)
        a.active += b.active
        a.hist += b.hist
        a.hist_max += b.hist_max
        a.top_val, a.top_ex, a.top_pos, a.top_win, a.top_start = _merge_top(
            (a.top_val, a.top_ex, a.top_pos, a.top_win, a.top_start),
            (b.top_val, b.top_ex, b.top_pos, b.top_win, b.top_start), a.k)
        if a.gated:
            a.bot_val, a.bot_ex, a.bot_pos, a.bot_win, a.bot_start = _merge_top(
                (a.bot_val, a.bot_ex, a.bot_pos, a.bot_win, a.bot_start),
                (b.bot_val, b.bot_ex, b.bot_pos, b.bot_win, b.bot_start), a.k)
            a.signs += b.signs
        b.flush()
        filled = b.s_key < EMPTY_KEY
        nseg, s = b.s_key.shape
        segs = torch.arange(nseg, device=b.s_key.device).unsqueeze(1).expand(nseg, s)[filled]
        a._pending.append((segs, b.s_key[filled], b.s_val[filled], b.s_ex[filled], b.s_pos[filled]))
        a.flush()
        a.n_excerpts += b.n_excerpts
        return a

    def split_moments(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Set this state's moments aside (returned) and start them afresh. The batches that
        follow sum theirs apart, and `join_moments` merges them in as `merge_` would merge a
        separate state's: a shard folded into this state in place leaves it bit for bit equal
        to the shard scanned on its own and merged, while only one state is alive."""
        saved = (self.n_tokens, self.mean, self.m2)
        self.n_tokens, self.mean, self.m2 = 0, torch.zeros_like(self.mean), torch.zeros_like(self.m2)
        return saved

    def join_moments(self, saved: tuple[int, torch.Tensor, torch.Tensor]) -> None:
        """Merge the moments summed since `split_moments` into those it set aside."""
        nb, mb, m2b = self.n_tokens, self.mean, self.m2
        self.n_tokens, self.mean, self.m2 = saved
        self._merge_moments(nb, mb, m2b)
        self.n_tokens += nb

    def _merge_moments_state(self, b: ScanState) -> None:
        na = self.n_tokens
        self._merge_moments(b.n_tokens, b.mean, b.m2)
        self.n_tokens = na + b.n_tokens

    def copy(self) -> ScanState:
        kw = {f.name: (v.clone() if isinstance(v, torch.Tensor) else v)
              for f in fields(self) if f.name != "_pending" for v in [getattr(self, f.name)]}
        st = ScanState(**kw)
        st._pending = [tuple(t.clone() for t in p) for p in self._pending]
        return st

    def to(self, device: torch.device | str) -> ScanState:
        self.flush()
        kw = {f.name: (v.to(device) if isinstance(v, torch.Tensor) else v)
              for f in fields(self) if f.name != "_pending" for v in [getattr(self, f.name)]}
        return ScanState(**kw)

    def state_dict(self) -> dict:
        """Plain tensors and ints (CPU), for torch.save between shards."""
        self.flush()
        return {f.name: (v.cpu() if isinstance(v, torch.Tensor) else v)
                for f in fields(self) if f.name != "_pending" for v in [getattr(self, f.name)]}

    @classmethod
    def from_state_dict(cls, d: dict, device: torch.device | str = "cpu") -> ScanState:
        return cls(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()})

    # -- reading ---------------------------------------------------------------------------
    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation over tokens."""
        return (self.m2 / max(self.n_tokens, 1)).sqrt()

    def edges(self) -> torch.Tensor:
        """[N, B+1] inner bin edges lo + i/scale (the outer bins are below / above them)."""
        b = self.n_bins - 2
        return self.lo.unsqueeze(1) + torch.arange(b + 1, device=self.lo.device) / self.scale.unsqueeze(1)


def _merge_top(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], k: int
               ) -> tuple[torch.Tensor, ...]:
    """The k best of two candidate sets [*, N] by (value desc, excerpt id asc)."""
    val, ex, pos, win, start = (torch.cat([x, y]) for x, y in zip(a, b))
    o1 = torch.sort(ex, dim=0, stable=True).indices
    val, ex, pos, start = (torch.gather(t, 0, o1) for t in (val, ex, pos, start))
    o2 = torch.sort(val, dim=0, descending=True, stable=True).indices[:k]
    order = torch.gather(o1, 0, o2)
    w = win.shape[1]
    widx = order.unsqueeze(1).expand(order.shape[0], w, order.shape[1])
    return (torch.gather(val, 0, o2), torch.gather(ex, 0, o2), torch.gather(pos, 0, o2),
            torch.gather(win, 0, widx), torch.gather(start, 0, o2))
