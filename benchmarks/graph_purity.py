"""Label purity of a training graph's pairs on the fashion clips: how often a pair the graph calls
"similar" (+1) / "dissimilar" (-1) shares a Fashion-MNIST label, against random pairs.

The learned models' pair losses trust these tags; a graph whose +1 pairs are barely purer than random
pairs teaches the student little beyond what reconstruction does (docs/quality.md).

    .venv/bin/python benchmarks/graph_purity.py bench-work/select/seed0/graph \\
        --train bench-work/quality/fashion/features/validation/train
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vhindex.data import FrameDataset  # noqa: E402
from vhindex.graph.stage import load_graph  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("graph", help="a graph folder written by build_graph (e.g. a teacher's)")
    p.add_argument("--train", required=True, help="the labelled training dataset the graph was built on")
    p.add_argument("--pairs", type=int, default=400_000, help="random pairs drawn")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    _, graph, video_ids, _ = load_graph(args.graph)
    ds = FrameDataset.open(args.train)
    row_of = {vid: r for r, vid in enumerate(ds.read_video_ids())}
    labels = ds.read_labels_multi_hot()[[row_of[v] for v in video_ids]]  # graph row order
    rng = np.random.default_rng(args.seed)
    n = len(video_ids)
    i = rng.integers(0, n, args.pairs)
    j = rng.integers(0, n, args.pairs)
    keep = i != j
    i, j = i[keep], j[keep]
    tags = graph.tags(i, j)
    share = (labels[i] & labels[j]).any(axis=1)
    out = {"graph": args.graph, "pairs": int(i.size), "random_share_label": round(float(share.mean()), 4)}
    for tag, name in ((1, "similar"), (-1, "dissimilar"), (0, "untagged")):
        sel = tags == tag
        out[name] = {"fraction_of_pairs": round(float(sel.mean()), 5),
                     "share_label": round(float(share[sel].mean()), 4) if sel.any() else None}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
