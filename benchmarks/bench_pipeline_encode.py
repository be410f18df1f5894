"""Benchmark: encoding through the Ray Data actor pipeline vs the same model in-process, side by side.

Writes a frame-feature dataset (random float16 features, M x D like EfficientNet-Lite0's 25 x 1280),
saves a DKPH student (random weights: throughput does not depend on training) and an ITQ model, then
for each model times, in this order and in one process:

* ``in-process``: :func:`vhindex.inprocess.encode_dataset` (read Parquet -> encode -> write codes);
* ``pipeline (ray)``: :class:`vhindex.pipelines.EncodeJob` on :func:`cluster.data.ray_engine`
  (one actor, ``--actor-threads`` torch threads) on a local Ray started beforehand -- the time
  includes the actor's start and model load, the driver's planning and the final manifest;
* ``pipeline (local)``: the same sharded job on the in-process engine (the sharding overhead alone).

Reports videos/s, the ratio pipeline / in-process (goal >= 0.8) and the projected time to re-encode
700,000 videos. Usage::

    python benchmarks/bench_pipeline_encode.py --videos 16000 --work bench-work/pipeline-encode
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write_frames(url: str, n: int, m: int, d: int, seed: int) -> None:
    from vhindex.data.schema import FrameDatasetMeta
    from vhindex.data.writer import FrameDatasetWriter

    rng = np.random.default_rng(seed)
    meta = FrameDatasetMeta(num_frames=m, feature_dim=d, dtype="float16", extractor="bench-random")
    with FrameDatasetWriter(url, meta, rows_per_file=10_000, row_group_size=1_000) as w:
        for s in range(0, n, 1_000):
            b = min(1_000, n - s)
            w.write([f"v{i:07d}" for i in range(s, s + b)], rng.standard_normal((b, m, d), dtype=np.float32))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", default="bench-work/pipeline-encode", help="scratch folder (data, models, codes)")
    p.add_argument("--videos", type=int, default=16_000)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--rows-per-shard", type=int, default=4_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2, help="torch threads in-process")
    p.add_argument("--actor-threads", type=int, default=2, help="torch threads inside the Ray actor")
    p.add_argument("--models", nargs="+", default=["dkph", "itq"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from cluster.data import ray_engine
    from cluster.runtime import connect_ray
    from vhindex.config import PipelineSection
    from vhindex.data import FrameDataset
    from vhindex.inprocess import encode_dataset
    from vhindex.models import DKPH, build_model
    from vhindex.pipelines import EncodeJob, run_local, run_sharded_job

    torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    frames_url = str(work / "frames")
    if not (work / "frames" / "_manifest.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        _write_frames(frames_url, args.videos, args.frames, args.dim, args.seed)
        print(f"wrote {args.videos} x {args.frames} x {args.dim} float16 in {time.perf_counter() - t0:.1f}s")
    frames = FrameDataset.open(frames_url)
    n = frames.num_videos

    models: dict[str, str] = {}
    for name in args.models:
        url = str(work / f"model-{name}")
        if name == "dkph":
            torch.manual_seed(args.seed)
            model = DKPH(args.bits, num_frames=args.frames, feature_dim=args.dim, hidden=args.hidden,
                         ffn=4 * args.hidden, device="cpu")
        else:
            model = build_model(name, args.bits)
            sample = next(frames.iter_batches(4_000)).features.astype(np.float32)
            model.fit(lambda s=sample: iter([s]), seed=args.seed)
        shutil.rmtree(url, ignore_errors=True)
        model.save(url)
        models[name] = url

    started = connect_ray()
    rows = []
    try:
        for name, url in models.items():
            from vhindex.models import load_model

            model = load_model(url)
            model.encode_packed(next(frames.iter_batches(args.batch_size)).features)  # warm-up, not timed
            out = work / f"codes-inproc-{name}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            encode_dataset(model, frames, str(out), batch_size=args.batch_size)
            t_in = time.perf_counter() - t0

            out_ray = work / f"codes-ray-{name}"
            shutil.rmtree(out_ray, ignore_errors=True)
            job = EncodeJob(frames_url, url, str(out_ray), rows_per_shard=args.rows_per_shard,
                            batch_size=args.batch_size, threads=args.actor_threads, device="cpu")
            t0 = time.perf_counter()
            rep = run_sharded_job(job, ray_engine(PipelineSection(actors=1)), engine_name="ray", stream=None)
            t_ray = time.perf_counter() - t0
            assert rep.exit_code == 0 and rep.ok == n, rep.summary_line()
            # steady state: first shard start -> last shard end (excludes actor start + model load)
            shard_stats = job.output.read_summary()["shard_stats"]
            t_ray_steady = max(s["finished_at"] for s in shard_stats) - min(
                s["finished_at"] - s["seconds"] for s in shard_stats)

            out_loc = work / f"codes-local-{name}"
            shutil.rmtree(out_loc, ignore_errors=True)
            job = EncodeJob(frames_url, url, str(out_loc), rows_per_shard=args.rows_per_shard,
                            batch_size=args.batch_size, threads=args.threads, device="cpu")
            t0 = time.perf_counter()
            rep = run_sharded_job(job, run_local, stream=None)
            t_loc = time.perf_counter() - t0
            assert rep.exit_code == 0 and rep.ok == n

            from vhindex.data import CodesDataset

            a = CodesDataset.open(str(out)).read_all()
            b = CodesDataset.open(str(out_ray)).read_all()
            assert a[0] == b[0] and np.array_equal(a[1], b[1]), "pipeline codes differ from in-process codes"
            rows.append((name, t_in, t_ray, t_ray_steady, t_loc))
    finally:
        if started:
            import ray

            ray.shutdown()

    print("```")
    print(f"bench_pipeline_encode  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} python {platform.python_version()} "
          f"torch {torch.__version__} load={os.getloadavg()}")
    print(f"data: {n} videos x M={args.frames} x D={args.dim} float16 ({args.rows_per_shard} videos/shard), "
          f"{args.bits} bits, batch {args.batch_size}; in-process threads={args.threads}, actor threads="
          f"{args.actor_threads}, 1 actor (1 CPU reserved)")
    print("pipeline (ray) = whole job incl. actor start + model load; steady = first shard start -> last shard end")
    print(f"{'model':<6} {'in-process':>15} {'pipeline (ray)':>15} {'ratio':>6} {'steady':>15} {'ratio':>6} "
          f"{'sharded local':>15} {'700k via ray':>13}")
    for name, t_in, t_ray, t_st, t_loc in rows:
        print(f"{name:<6} {n / t_in:>9,.0f} vid/s {n / t_ray:>9,.0f} vid/s {t_in / t_ray:>6.2f} "
              f"{n / t_st:>9,.0f} vid/s {t_in / t_st:>6.2f} {n / t_loc:>9,.0f} vid/s "
              f"{700_000 * t_st / n / 60 + (t_ray - t_st) / 60:>9.1f} min")
    print("codes identical across the three paths: yes")
    print("```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
