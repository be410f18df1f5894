"""Validation-split learning curves on the fashion clips: how a learned model's codes evolve per epoch.

The quality benchmark's protocol: hyper-parameters and epoch counts are chosen on a **validation split
carved from the labelled training clips** (:func:`vhindex.benchdata.quality.carve_validation`: the same
seeded split ``vhindex bench quality`` uses), never on query / database. This script trains one
learned model with the product's own trainers (``vhindex.train``: same loop, masking, schedule) on the
rest of the training clips, scores validation mAP@20 (paper protocol) and the code statistics
(distinct codes, bit balance, bit correlation: :func:`vhindex.eval.code_statistics`) after every epoch,
and appends the curve as one JSON line to ``--log``. It never reads query / database.

    .venv/bin/python benchmarks/bench_select.py --method dkph --bits 64 --epochs 40 \\
        --params '{"hidden": 128, "ffn": 512}' --train '{"lr": 1.0e-3, "teacher_epochs": 40}'

Runs of BTH / DKPH with the same teacher settings share one teacher and graph under ``--work``.
Needs the fashion features of ``vhindex bench quality`` (``<bench.work>/fashion/features/train``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vhindex.config import config_from_dict, load_config  # noqa: E402
from vhindex.data import FrameDataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--config", default="configs/bench/quality.yaml", help="for bench.work and the train section")
    p.add_argument("--method", required=True, help="conmh, gcmh, dkph or bth")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--params", default="{}", help="model parameters (JSON)")
    p.add_argument("--train", default="{}", help="train-section fields (JSON), e.g. lr, batch_size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="bench-work/select", help="run folders (teacher / graph reused when unchanged)")
    p.add_argument("--tag", default="", help="a name for the run in the log")
    p.add_argument("--log", default="benchmarks/results/select_fashion.jsonl")
    args = p.parse_args(argv)

    from vhindex.benchdata.quality import carve_validation
    from vhindex.train.common import check_datasets

    base = load_config(args.config)
    b = base.bench
    urls = carve_validation(f"{b.work.rstrip('/')}/fashion/features/train",
                            f"{b.work.rstrip('/')}/fashion/features/validation", b.validation_queries,
                            b.validation_database)
    meta = FrameDataset.open(urls["query"]).meta
    n_train = FrameDataset.open(urls["train"]).num_videos
    d = base.model_dump(mode="json")
    train = {**d["train"], **b.fashion_train, **json.loads(args.train), "epochs": args.epochs}
    d["run"] = {**d["run"], "seed": args.seed, "output_dir": f"{args.work}/seed{args.seed}"}
    d["data"] = {**d["data"], **urls}
    d["model"] = {"name": args.method, "bits": args.bits,
                  "params": {**json.loads(args.params), "num_frames": meta.num_frames, "feature_dim": meta.feature_dim}}
    d["train"] = train
    d["graph"] = {**d["graph"], "anchors": min(d["graph"]["anchors"], max(10, int(b.anchors_per_video * n_train))),
                  "executor": "sequential"}
    tag = args.tag or f"{args.method}-{args.bits}"
    d["run"]["output_dir"] += f"/{tag}" if args.method in ("conmh", "gcmh") else ""
    cfg = config_from_dict(d, source="bench_select")
    datasets = check_datasets(cfg)
    validation = (datasets["query"], datasets["database"])
    t0 = time.perf_counter()
    if args.method in ("conmh", "gcmh"):
        from vhindex.train import contrastive

        if contrastive.uses_feature_graph(contrastive.student_params(cfg)):
            contrastive.build_neighbour_graph(cfg, datasets["train"])
        _, result = contrastive.train_contrastive_student(cfg, datasets, progress=False, validation=validation)
        stage = f"{cfg.run.output_dir}/{args.method}/student"
    else:
        from vhindex.train import recipes

        teacher, _ = recipes.train_teacher(cfg, datasets, progress=False)
        graph = recipes.build_teacher_graph(cfg, recipes.write_teacher_embeddings(cfg, teacher, datasets["train"]))
        # each student variant in its own folder (the teacher and graph above are shared)
        scfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"output_dir": f"{cfg.run.output_dir}/{tag}"})})
        trainer = recipes.train_bth if args.method == "bth" else recipes.train_student
        _, result = trainer(scfg, datasets, graph_url=graph, progress=False, validation=validation)
        stage = f"{scfg.run.output_dir}{'/bth' if args.method == 'bth' else ''}/student"
    from vhindex.train.common import _read_stage

    selection = (_read_stage(stage, None) or {}).get("selection", {})
    metrics = result.metrics if result is not None else []
    videos_per_s = [m["videos_per_s"] for m in metrics if m.get("videos_per_s")]
    line = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.node()} {os.cpu_count()} CPUs",
            "tag": tag, "method": args.method, "bits": args.bits, "params": json.loads(args.params),
            "train": json.loads(args.train), "seed": args.seed, "epochs": args.epochs, **selection,
            "seconds": round(time.perf_counter() - t0, 1),
            "videos_per_s": round(sum(videos_per_s) / len(videos_per_s), 1) if videos_per_s else None,
            "split": {"train": n_train, "val_queries": b.validation_queries, "val_database": b.validation_database}}
    print("RESULT " + json.dumps(line), flush=True)
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        with open(args.log, "a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
