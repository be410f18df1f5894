"""Validation-split model selection on the fashion clips: learning curves and the chosen epoch count.

The honest protocol of the quality benchmark: hyper-parameters and epoch counts are chosen on a
**validation split carved from the (labelled) training clips**, never on query / database. This
script carves it (seeded: ``--val-queries`` clips as queries, ``--val-database`` as their database,
the rest is the training set), trains one learned model with the product's own trainer
(:mod:`vhindex.train.contrastive` / :mod:`vhindex.train.recipes`, the same loop, masking and
schedule as ``vhindex train``), scores validation mAP@K (paper protocol, relevance = a shared
label) after every epoch and reports the curve and the best epoch. It never reads query / database.

    .venv/bin/python benchmarks/bench_select.py --method gcmh --bits 64 --epochs 40 \\
        --params '{"depth": 2}' --train '{"lr": 5.0e-4}' --log benchmarks/results/select_fashion.jsonl

Needs the fashion features of ``vhindex bench quality`` (``<bench.work>/fashion/features/train``).
Every run appends one JSON line (settings, curve, best epoch, seconds, videos/s) to ``--log``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vhindex.config import config_from_dict, load_config  # noqa: E402
from vhindex.data import FrameDataset, FrameDatasetWriter  # noqa: E402
from vhindex.eval import evaluate  # noqa: E402


def carve(train_url: str, out: str, n_query: int, n_database: int, seed: int) -> dict[str, str]:
    """Split the training clips into ``train`` / ``val_query`` / ``val_database`` datasets under ``out``."""
    ds = FrameDataset.open(train_url)
    feats, ids, labels = [], [], []
    for fb in ds.iter_batches(4096, columns=("video_id", "features", "labels")):
        feats.append(np.asarray(fb.features))
        ids.extend(fb.video_ids)
        labels.extend(fb.labels)
    x = np.concatenate(feats)
    perm = np.random.default_rng([seed, 7]).permutation(len(ids))
    parts = {"val_query": perm[:n_query], "val_database": perm[n_query:n_query + n_database],
             "train": np.sort(perm[n_query + n_database:])}
    urls = {}
    for name, rows in parts.items():
        urls[name] = f"{out}/{name}"
        with FrameDatasetWriter(urls[name], ds.meta, with_labels=True, row_group_size=256, overwrite=True) as w:
            for s in range(0, len(rows), 1024):
                sel = rows[s:s + 1024]
                w.write([ids[i] for i in sel], x[sel], [labels[i] for i in sel])
    return urls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--config", default="configs/bench/quality.yaml", help="for bench.work and the train section")
    p.add_argument("--method", required=True, help="conmh, gcmh, dkph or bth")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--params", default="{}", help="model parameters (JSON)")
    p.add_argument("--train", default="{}", help="train-section fields (JSON), e.g. lr, batch_size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-queries", type=int, default=250)
    p.add_argument("--val-database", type=int, default=750)
    p.add_argument("--k", type=int, default=20, help="select on validation mAP@k (paper protocol)")
    p.add_argument("--log", default="benchmarks/results/select_fashion.jsonl")
    args = p.parse_args(argv)

    base = load_config(args.config)
    work = base.bench.work.rstrip("/")
    train_url = f"{work}/fashion/features/train"
    tmp = tempfile.mkdtemp(prefix="vhx-select-")
    urls = carve(train_url, tmp, args.val_queries, args.val_database, seed=0)  # one split for every run
    vq, vd = FrameDataset.open(urls["val_query"]), FrameDataset.open(urls["val_database"])
    n_classes = max(vq.meta.num_classes or 0, vd.meta.num_classes or 0, 10)
    ql, dl = vq.read_labels_multi_hot(n_classes), vd.read_labels_multi_hot(n_classes)
    meta = vq.meta

    d = base.model_dump(mode="json")
    d["run"] = {**d["run"], "seed": args.seed, "output_dir": f"{tmp}/run"}
    d["data"] = {**d["data"], "train": urls["train"], "query": urls["val_query"], "database": urls["val_database"]}
    d["model"] = {"name": args.method, "bits": args.bits,
                  "params": {**json.loads(args.params), "num_frames": meta.num_frames, "feature_dim": meta.feature_dim}}
    d["train"] = {**d["train"], **json.loads(args.train), "epochs": args.epochs, "eval_every": 1}
    n_train = FrameDataset.open(urls["train"]).num_videos
    d["graph"] = {**d["graph"], "anchors": min(d["graph"]["anchors"], max(10, int(base.bench.anchors_per_video * n_train))),
                  "executor": "sequential"}
    cfg = config_from_dict(d, source="bench_select")

    from vhindex.eval.codes import code_statistics
    from vhindex.inprocess import encode_in_memory

    curve: list[float] = []
    stats: list[dict] = []
    holder: dict = {}  # the model being trained (the loop's eval hook receives only its network)

    def val_map(_net, epoch: int) -> dict[str, float]:
        _, qc = encode_in_memory(holder["model"], vq)
        _, dc = encode_in_memory(holder["model"], vd)
        res = evaluate(dc, qc, dl, ql, ks=[args.k], protocol="paper", pr=False, precision_ns=[]).map_at_k[args.k]
        curve.append(float(res))
        stats.append(code_statistics(dc))
        print(f"[select] {args.method}-{args.bits} epoch {epoch + 1}: val mAP@{args.k} {res:.4f} codes {stats[-1]}",
              flush=True)
        return {f"val_map@{args.k}": float(res)}

    t0 = time.perf_counter()
    from vhindex.train.common import check_datasets

    datasets = check_datasets(cfg)
    if args.method in ("conmh", "gcmh"):
        import torch

        from vhindex.models import build_model
        from vhindex.train import contrastive as C
        from vhindex.train.common import PartnerFrames, student_params

        params = student_params(cfg)
        neighbours = partners = None
        if args.method == "gcmh" and C.uses_feature_graph(params):
            C.build_neighbour_graph(cfg, datasets["train"])
            neighbours, _ = C._neighbours(cfg, datasets["train"])
            partners = PartnerFrames(datasets["train"], cfg.train.partner_cache_bytes)
        torch.manual_seed(cfg.run.seed)
        holder["model"] = build_model(args.method, args.bits, device=cfg.train.device, **params)
        result = C.train_contrastive(cfg, holder["model"], datasets["train"], f"{tmp}/run/stage",
                                     neighbours=neighbours, partner_frames=partners, eval_fn=val_map, progress=False)
    else:
        from vhindex.train import recipes as R

        teacher, _ = R.train_teacher(cfg, datasets, progress=False)
        graph = R.build_teacher_graph(cfg, R.write_teacher_embeddings(cfg, teacher, datasets["train"]))
        # the student's per-epoch validation: the recipe's eval hook evaluates on data.query / data.database
        # (here: the validation split), so the metrics file carries the curve
        model, result = (R.train_bth if args.method == "bth" else R.train_student)(
            cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_every": 1})}), datasets,
            graph_url=graph, progress=False)
        curve = [float(m.get(f"eval_map@{args.k}", m.get("eval_map@20", float("nan")))) for m in result.metrics]
    seconds = time.perf_counter() - t0
    best = int(np.nanargmax(curve)) + 1 if curve else 0
    videos_per_s = float(np.mean([m.get("videos_per_s", np.nan) for m in result.metrics])) if result.metrics else None
    line = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.node()} {os.cpu_count()} CPUs",
            "method": args.method, "bits": args.bits, "params": json.loads(args.params), "train": json.loads(args.train),
            "seed": args.seed, "epochs": args.epochs, "curve": [round(v, 4) for v in curve], "best_epoch": best,
            "code_stats": [{k: round(v, 4) if isinstance(v, float) else v for k, v in st.items()} for st in stats],
            "best_val": round(max(curve), 4) if curve else None, "seconds": round(seconds, 1),
            "videos_per_s": round(videos_per_s, 1) if videos_per_s else None,
            "split": {"train": n_train, "val_queries": args.val_queries, "val_database": args.val_database}}
    print("RESULT " + json.dumps(line), flush=True)
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        with open(args.log, "a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
