"""The near-duplicate benchmark's UTS frame-level row, served: the same numbers through HTTP.

Builds the frame-level index the runner's ``uts frame-level itq`` row uses (ITQ fitted on single
frames of the near-duplicate set, ``bench.uts_top_n`` = 1000, leave-one-out), once in-process
(:class:`FrameLevelIndex`, the runner's code path) and once as a sharded frame index served by Ray
Serve (``--shards`` frame-shard deployments, ``POST /search`` with ``level: frame`` and
``exclude_self``), ranks every video against all the others both ways, and reports mAP / top-1 of
both, whether every ranking is identical, and the served query latency.

    .venv/bin/python benchmarks/neardup_served_frames.py --bits 32 --shards 3 \\
        --report benchmarks/results/neardup_served_frames.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="bench-work/quality/neardup")
    ap.add_argument("--out", default="bench-work/served-frames")
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--top-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default="benchmarks/results/neardup_served_frames.md")
    args = ap.parse_args()

    import requests

    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import deploy, serve_cluster_env, service_url
    from vhindex.benchdata.quality import leave_one_out_metrics
    from vhindex.config import ServeSection
    from vhindex.data import FrameDataset
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.index.frame_shards import build_sharded_frame_index
    from vhindex.index.frames import FrameLevelIndex, rank_videos_leave_one_out
    from vhindex.index.sharded import IndexSpec, build_sharded_index
    from vhindex.inprocess import frame_batches
    from vhindex.models import build_model

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    feats_url = f"{args.work}/features/all"
    ds = FrameDataset.open(feats_url)
    ids = ds.read_video_ids()
    groups = ds.read_labels_multi_hot().argmax(axis=1)
    d = ds.meta.feature_dim
    # the runner's frame model (QualityRun._frame_model): ITQ on single frames, streamed batches
    model = build_model("itq", args.bits)
    model.fit(lambda: (b.reshape(-1, 1, d) for b in frame_batches(ds, 1024)), seed=args.seed)
    model.save(str(out / f"frame-itq-{args.bits}"))
    feats = np.concatenate(list(frame_batches(ds, 1024)))
    n, m, _ = feats.shape
    codes = model.encode_packed(feats.reshape(n * m, 1, d)).reshape(n, m, -1)
    single = FrameLevelIndex(args.bits)
    single.add(ids, codes)
    t0 = time.perf_counter()
    oracle = rank_videos_leave_one_out(single, ids, list(codes), top_n=args.top_n)
    t_inproc = time.perf_counter() - t0
    pos = {v: i for i, v in enumerate(ids)}
    want = leave_one_out_metrics([np.array([pos[v] for v in r]) for r in oracle], groups)

    build_sharded_frame_index(feats_url, str(out / f"frame-itq-{args.bits}"), str(out / "fidx"), args.shards,
                              overwrite=True)
    vmodel = build_model("itq", 64)  # the service also needs a video-level index; not measured here
    vmodel.fit(lambda: iter([feats.astype(np.float32)]), seed=args.seed)
    with CodesDatasetWriter(str(out / "vcodes"), CodesDatasetMeta(bits=64, model="itq", model_version=vmodel.version()),
                            overwrite=True, row_group_size=50) as w:
        w.write(ids, vmodel.encode_packed(feats))
    build_sharded_index(str(out / "vcodes"), str(out / "vidx"), 2, spec=IndexSpec("flat", {}), overwrite=True)
    port, direct_port = free_ports(2)
    settings = ServeSection(index=str(out / "vidx"), frame_index=str(out / "fidx"), port=port, direct_port=direct_port,
                            shard_cpus=0.1, router_cpus=0.1, app_name="served-frames", frame_top_n=args.top_n)
    started = connect_ray(env=serve_cluster_env(settings))
    served, latency = [], []
    try:
        deploy(settings)
        base = service_url(settings)
        session = requests.Session()
        for vid in ids:
            t1 = time.perf_counter()
            r = session.post(base + "/search", json={"video_id": vid, "level": "frame", "k": n - 1,
                                                     "exclude_self": True, "segments": False}, timeout=120)
            latency.append(1000 * (time.perf_counter() - t1))
            r.raise_for_status()
            served.append([h["video_id"] for h in r.json()["results"]])
    finally:
        from ray import serve

        serve.shutdown()
        if started:
            import ray

            ray.shutdown()
    got = leave_one_out_metrics([np.array([pos[v] for v in r]) for r in served], groups)
    same = sum(a == b for a, b in zip(served, oracle, strict=True))
    lat = sorted(latency)
    lines = [f"# Near-duplicates: the UTS frame-level row, served ({date.today().isoformat()})", "",
             f"`.venv/bin/python benchmarks/neardup_served_frames.py --bits {args.bits} --shards {args.shards}` -- "
             f"{platform.machine()}, {os.cpu_count()} CPUs; {n} videos x {m} frames, ITQ-{args.bits} frame codes, "
             f"top-N {args.top_n}, leave-one-out.", "",
             "| path | mAP | top-1 |", "|---|---:|---:|",
             f"| in-process `FrameLevelIndex` (the runner's `uts frame-level itq` row) | {want['map']:.4f} | "
             f"{want['top1']:.4f} |",
             f"| served: {args.shards} frame shards, `POST /search` level frame | {got['map']:.4f} | {got['top1']:.4f} |",
             "", f"Identical full rankings: **{same} of {n}**. Served query (k = {n - 1}, no segments) p50 "
             f"{lat[len(lat) // 2]:.1f} ms, p99 {lat[min(len(lat) - 1, int(0.99 * len(lat)))]:.1f} ms; in-process "
             f"{1000 * t_inproc / n:.1f} ms per query (batched)."]
    Path(args.report).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
