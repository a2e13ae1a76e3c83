"""A label's text, from its evidence: concepts with their selectivity, the tokens it fires on and
the groups it is weak on."""
from __future__ import annotations

import numpy as np
import polars as pl

from neurolens.engine.labels.evidence import Evidence

LABEL_MIN_SEL = 0.3     # further concepts are named in the label text from this selectivity
LABEL_MAX_CONCEPTS = 3  # (all significant concepts are listed in `concepts`)


def _label_texts(ev: Evidence, primary: np.ndarray, strong: np.ndarray,
                 weak: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """`royalty (S=0.91, fires on king, queen; weak on monarch) + animals (S=0.62)`."""
    order = np.argsort(-ev.sel, axis=1, kind="stable")
    cnames = np.array(ev.concepts, dtype=object)
    ranked = cnames[order]                                                        # [n, c]
    svals = np.take_along_axis(ev.sel, order, axis=1)
    keep = svals > 0
    rank = np.arange(svals.shape[1])[None, :]
    named = keep & ((rank == 0) | (svals >= LABEL_MIN_SEL)) & (rank < LABEL_MAX_CONCEPTS)
    df = pl.DataFrame({
        "j": np.repeat(np.arange(ev.sel.shape[0]), ev.sel.shape[1])[keep.ravel()],
        "concept": ranked.ravel()[keep.ravel()].astype(str),
        "s": svals.ravel()[keep.ravel()],
        "named": named.ravel()[keep.ravel()],
    }).with_columns(part=pl.format("{} (S={})", "concept", pl.col("s").round(2).cast(pl.String)))
    agg = df.group_by("j", maintain_order=True).agg(pl.col("concept"),
                                                    pl.col("part").filter(pl.col("named")))
    agg = agg.sort("j")
    cols = {f"{name}{i}": pl.Series(a[:, i].tolist(), dtype=pl.String)
            for name, a in (("s", strong), ("w", weak)) for i in range(a.shape[1])}
    lists = lambda name, a: pl.concat_list([f"{name}{i}" for i in range(a.shape[1])]  # noqa: E731
                                           ).list.drop_nulls()
    text = pl.DataFrame({"first": agg["part"].list.first(), "rest": agg["part"].list.slice(1),
                         "tokens": pl.Series(ev.tokens, dtype=pl.List(pl.String)), **cols})
    text = text.with_columns(strong=lists("s", strong), weak=lists("w", weak)).with_columns(
        fires=pl.when(pl.col("tokens").list.len() > 0).then("tokens").otherwise("strong"))
    text = text.with_columns(
        head=pl.col("first").str.replace(r"\)$", ""),
        f=pl.when(pl.col("fires").list.len() > 0)
          .then(pl.lit(", fires on ") + pl.col("fires").list.join(", ")).otherwise(pl.lit("")),
        w=pl.when(pl.col("weak").list.len() > 0)
          .then(pl.lit("; weak on ") + pl.col("weak").list.join(", ")).otherwise(pl.lit("")),
        r=pl.when(pl.col("rest").list.len() > 0)
          .then(pl.lit(" + ") + pl.col("rest").list.join(" + ")).otherwise(pl.lit("")),
    ).with_columns(label=pl.concat_str("head", "f", "w", pl.lit(")"), "r"))
    return text["label"].to_list(), agg["concept"].to_list()
