"""Fast in-memory exploration of ConMH / GCMH variants on the fashion clips' validation split.

Not the product trainer: a plain Adam loop over the training clips held in memory (no Parquet streaming,
no checkpoints, so a variant costs only its compute), with the product's networks, masking and losses
(:mod:`vhindex.models.contrastive`, :mod:`vhindex.models.losses`) and the same validation split as
``vhindex bench quality`` (:func:`vhindex.benchdata.quality.carve_validation`: seeded, 250 queries + 750
database clips carved from the 4,000 labelled training clips; the model trains on the other 3,000). It
scores validation mAP@20 (paper protocol) and the database codes' statistics after every epoch. Query
and database are never read. These runs guided GCMH's design (``docs/quality.md``); the reported
numbers come from ``vhindex bench quality``.

    .venv/bin/python benchmarks/explore_fashion.py --model gcmh --neighbours model --neighbour-start 5 \\
        --anchors 100 --lr 1e-4 --epochs 25 --params '{"depth": 12, "heads": 6, "dec_width": 192, \\
        "dec_depth": 2, "dec_heads": 3, "pooling": "mean_codes", "mask_ratio": 0.75, "temperature": 0.5}'

``--neighbours``: ``none``; ``features`` (groups of the k-means anchors of the mean-pooled input
features, built once); ``model`` (of the model's own embeddings, rebuilt every ``--neighbour-refresh``
epochs from ``--neighbour-start`` on). Each epoch's line shows the purity of the neighbour pairs
(share a label) when they change. One JSON line per run is appended to ``--log``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vhindex.benchdata.quality import carve_validation  # noqa: E402
from vhindex.data import FrameDataset  # noqa: E402
from vhindex.eval import evaluate  # noqa: E402
from vhindex.eval.codes import code_statistics  # noqa: E402
from vhindex.models import build_model  # noqa: E402
from vhindex.models.contrastive import two_view_masks  # noqa: E402
from vhindex.models.losses import conmh_loss, gcmh_loss  # noqa: E402
from vhindex.train.contrastive import AnchorKnnNeighbours, AnchorNeighbours  # noqa: E402


def load(url: str) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, M, D)`` float32 and multi-hot labels of a frame dataset."""
    ds = FrameDataset.open(url)
    x = np.concatenate([b.features for b in ds.iter_batches(4096, columns=("video_id", "features"))])
    return x.astype(np.float32), ds.read_labels_multi_hot(10)


def val_map(model, xq: np.ndarray, lq: np.ndarray, xd: np.ndarray, ld: np.ndarray) -> tuple[float, dict]:
    """Validation mAP@20 (paper protocol) and the database codes' statistics."""
    qc, dc = model.encode_packed(xq), model.encode_packed(xd)
    score = evaluate(dc, qc, ld, lq, ks=[20], protocol="paper", pr=False, precision_ns=[]).map_at_k[20]
    return float(score), code_statistics(dc)


def anchor_groups(emb: np.ndarray, anchors: int, seed: int, k: int = 0) -> AnchorNeighbours:
    """Each clip's nearest k-means anchor of the L2-normalised embeddings (``k > 0``: only its ``k``
    nearest group members are partners)."""
    emb = np.ascontiguousarray(emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12), dtype=np.float32)
    km = faiss.Kmeans(emb.shape[1], anchors, niter=20, seed=seed, verbose=False)
    km.train(emb)
    nearest = km.index.search(emb, 1)[1][:, 0]
    return AnchorKnnNeighbours(nearest, emb, k) if k > 0 else AnchorNeighbours(nearest)


def purity(nb: AnchorNeighbours, labels: np.ndarray, rng: np.random.Generator, n: int = 3000) -> float:
    """Share of sampled neighbour pairs that share a label."""
    rows = rng.integers(0, len(labels), n)
    partners = nb.sample(rows, rng)
    return float(((labels[rows] * labels[partners]).sum(axis=1) > 0).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", default="bench-work/quality", help="bench.work of the quality benchmark")
    p.add_argument("--model", default="gcmh", choices=["conmh", "gcmh"])
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--params", default="{}", help="model parameters (JSON)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neighbours", default="none", choices=["none", "features", "model"])
    p.add_argument("--neighbour-start", type=int, default=5)
    p.add_argument("--neighbour-refresh", type=int, default=1)
    p.add_argument("--anchors", type=int, default=100)
    p.add_argument("--neighbour-k", type=int, default=0, help="> 0: partners are the k nearest group members")
    p.add_argument("--tag", default="")
    p.add_argument("--log", default="benchmarks/results/explore_fashion.jsonl")
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    feats = f"{a.work}/fashion/features"
    urls = carve_validation(f"{feats}/train", f"{feats}/validation", 250, 750)
    (xtr, ltr), (xq, lq), (xd, ld) = (load(urls[s]) for s in ("train", "query", "database"))
    params = json.loads(a.params)
    if a.model == "gcmh":
        params.setdefault("neighbour_weight", 0.0 if a.neighbours == "none" else 1.0)
    model = build_model(a.model, a.bits, num_frames=xtr.shape[1], feature_dim=xtr.shape[2], device="cpu", **params)
    net, rec = model.net, model.recipe
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    x_all = torch.from_numpy(xtr)
    m = xtr.shape[1]
    neighbours: AnchorNeighbours | None = None
    curve, stats, best = [], [], (-1.0, 0)
    t_start = time.time()
    for epoch in range(a.epochs):
        note = ""
        if a.neighbours == "features" and neighbours is None:
            neighbours = anchor_groups(xtr.mean(axis=1), a.anchors, a.seed)
            note = f" neighbours from the features, purity {purity(neighbours, ltr, rng):.3f}"
        refresh = epoch >= a.neighbour_start and (epoch - a.neighbour_start) % a.neighbour_refresh == 0
        if a.neighbours == "model" and refresh:
            neighbours = anchor_groups(model.latent_features(xtr), a.anchors, a.seed + epoch, a.neighbour_k)
            model.net.train()
            note = f" neighbours from the model, purity {purity(neighbours, ltr, rng):.3f}"
        net.train()
        t0 = time.time()
        order = rng.permutation(len(xtr))
        totals: dict[str, float] = {}
        steps = 0
        for start in range(0, len(xtr) - a.batch + 1, a.batch):
            idx = order[start:start + a.batch]
            xb = x_all[torch.from_numpy(idx)]
            (v1, k1), (v2, k2) = two_view_masks(len(idx), m, rec["mask_ratio"], gen)
            o1, o2 = net(xb, v1, k1), net(xb, v2, k2)
            if a.model == "conmh":
                loss = conmh_loss(o1, o2, temperature=rec["temperature"], tau_plus=rec["tau_plus"],
                                  contrast_weight=rec["contrast_weight"])
            else:
                nb = None
                if neighbours is not None:
                    (vn, kn), _ = two_view_masks(len(idx), m, rec["mask_ratio"], gen)
                    nb = net(x_all[torch.from_numpy(neighbours.sample(idx, rng))], vn, kn)
                loss = gcmh_loss(o1, o2, nb, temperature=rec["temperature"], tau_plus=rec["tau_plus"],
                                 contrast_weight=rec["contrast_weight"], neighbour_weight=rec["neighbour_weight"],
                                 balance_weight=rec["balance_weight"],
                                 decorrelation_weight=rec["decorrelation_weight"])
            opt.zero_grad()
            loss["total"].backward()
            opt.step()
            steps += 1
            for k, v in loss.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        net.eval()
        score, st = val_map(model, xq, lq, xd, ld)
        curve.append(round(score, 4))
        stats.append(st)
        if score > best[0]:
            best = (score, epoch + 1)
        losses = " ".join(f"{k}={v / max(steps, 1):.3f}" for k, v in totals.items())
        print(f"epoch {epoch + 1} {time.time() - t0:.1f}s val mAP@20 {score:.4f} distinct {st['distinct']} "
              f"imbalance {st['bit_imbalance']:.3f} corr {st['bit_abs_corr']:.3f} {losses}{note}", flush=True)
    result = {"tag": a.tag, "model": a.model, "bits": a.bits, "params": params, "lr": a.lr, "batch": a.batch,
              "neighbours": a.neighbours, "neighbour_start": a.neighbour_start, "anchors": a.anchors, "neighbour_k": a.neighbour_k,
              "best_val": round(best[0], 4), "best_epoch": best[1], "curve": curve,
              "distinct": [s["distinct"] for s in stats], "seconds": round(time.time() - t_start)}
    print("RESULT " + json.dumps(result), flush=True)
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    with open(a.log, "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
