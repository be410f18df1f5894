"""Where the near-duplicate benchmark's mAP is lost: average precision per edit and per family.

Reads the frame features ``vhindex bench quality`` extracted for the near-duplicate set and ranks
every video against all the others (leave-one-out, the benchmark's protocol) by cosine similarity of
mean-pooled features -- the unhashed reference every hashing method is compared with. Then it
reports AP per edit (``crop``, ``sepia``, ...) and per family, which families the errors of the worst
ones land in, and the mAP with the families whose errors are mostly each other left out.

    .venv/bin/python benchmarks/neardup_breakdown.py --features bench-work/quality/neardup/features/all \\
        --report benchmarks/results/neardup_breakdown.md
"""

from __future__ import annotations

import argparse
import collections
from datetime import date
from pathlib import Path

import numpy as np


def average_precisions(sim: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """AP of every video as a query over all the others (NaN when alone in its group)."""
    out = np.full(len(groups), np.nan)
    for i in range(len(groups)):
        order = np.argsort(-sim[i], kind="stable")
        order = order[order != i]
        rel = groups[order] == groups[i]
        if rel.any():
            hits = np.cumsum(rel)
            out[i] = float((hits[rel] / (np.flatnonzero(rel) + 1)).sum() / rel.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default="bench-work/quality/neardup/features/all")
    ap.add_argument("--report", default="benchmarks/results/neardup_breakdown.md")
    ap.add_argument("--worst", type=int, default=8, help="families listed with where their errors go")
    args = ap.parse_args()

    from vhindex.benchdata.quality import _mean_pooled_unit, _read_features
    from vhindex.data import FrameDataset

    ds = FrameDataset.open(args.features)
    ids = ds.read_video_ids()
    groups = ds.read_labels_multi_hot().argmax(axis=1)
    x = _mean_pooled_unit(_read_features(ds))
    sim = x @ x.T
    aps = average_precisions(sim, groups)
    family = np.array([v.split("__", 1)[0] for v in ids])
    edit = np.array([v.split("__", 1)[1] if "__" in v else "?" for v in ids])
    # a family's canonical name is that of its original's file
    fam_of_group = {int(g): family[(groups == g) & (edit == "original")][0] if ((groups == g) & (edit == "original")).any()
                    else family[groups == g][0] for g in np.unique(groups)}
    ok = ~np.isnan(aps)
    lines = [f"# Near-duplicate benchmark: where mAP is lost ({date.today().isoformat()})", "",
             f"`{' '.join(['.venv/bin/python', 'benchmarks/neardup_breakdown.py', '--features', args.features])}`", "",
             f"{len(ids)} videos, {len(fam_of_group)} families; float mean-pooled features, cosine, leave-one-out. "
             f"mAP **{np.nanmean(aps):.4f}**.", "", "## AP per edit", "", "| edit | videos | mAP |", "|---|---:|---:|"]
    for e in sorted(set(edit), key=lambda e: np.nanmean(aps[edit == e])):
        lines.append(f"| {e} | {int((ok & (edit == e)).sum())} | {np.nanmean(aps[edit == e]):.3f} |")
    lines += ["", "## The worst families and where their errors land", "",
              "| family | videos | mAP | other families in its top 12 (count over its queries) |", "|---|---:|---:|---|"]
    fam_ap = {g: float(np.nanmean(aps[groups == g])) for g in fam_of_group}
    worst = sorted(fam_ap, key=fam_ap.get)[: args.worst]
    confusers: dict[int, collections.Counter] = {}
    for g in worst:
        c: collections.Counter = collections.Counter()
        for i in np.flatnonzero(groups == g):
            order = np.argsort(-sim[i], kind="stable")
            order = order[order != i][:12]
            c.update(fam_of_group[int(groups[j])] for j in order if groups[j] != g)
        confusers[g] = c
        top = ", ".join(f"{name} ({n})" for name, n in c.most_common(3)) or "-"
        lines.append(f"| {fam_of_group[g]} | {int((groups == g).sum())} | {fam_ap[g]:.3f} | {top} |")
    # families whose errors go mostly to one other family that returns the favour: hard-negative pairs
    pairs = set()
    for g in worst:
        if confusers[g]:
            other, n = confusers[g].most_common(1)[0]
            og = next(k for k, v in fam_of_group.items() if v == other)
            if og in worst and confusers[og] and n >= 0.5 * sum(confusers[g].values()):
                pairs.add(frozenset((g, og)))
    hard = set().union(*pairs) if pairs else set()
    keep = ok & ~np.isin(groups, list(hard))
    lines += ["", "Hard-negative pairs (each one's errors mostly the other's videos): "
              + (", ".join(" / ".join(sorted(fam_of_group[g] for g in p)) for p in pairs) or "none") + ".", "",
              f"- mAP without those families: **{aps[keep].mean():.4f}** ({int(keep.sum())} queries).",
              f"- mAP if they were ranked perfectly: **{np.where(np.isin(groups, list(hard)), 1.0, aps)[ok].mean():.4f}**."]
    Path(args.report).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
