"""Frame-level copy search at scale: query latency and memory up to 700,000 videos x 25 frames (17.5 M codes).

Synthetic gallery (no real video at this scale): every video is a random 32-bit (or 64-bit) centre code
and its 25 frame codes are the centre with each bit flipped with probability 3% -- frames of one video are
near each other, as ITQ frame codes of one shot are. Queries: half are edited copies of gallery videos
(each bit of each frame flipped with probability 2%), half unrelated random videos.

What is timed is the work of one frame-level request after decoding: the top-N gallery frames of each of
the 25 query frames (the shard step, ``FrameLevelIndex.top_frames``), the merge and Algorithm 1's sums and
ranking (the router step) -- ``ShardedFrameIndex.search_batch`` with one shard, in process, which the
service's answers equal (tests/test_serve_frames.py). Multi-index hashing (``method="mih"``) and brute force
(``method="brute"``) run side by side on the same queries, the brute force on fewer of them (it takes
seconds each at 17.5 M); their answers are compared for every query both ran.

With ``--serve-shards S`` the largest gallery is also written as a sharded frame index (``S`` frame shards)
and served (local Ray + Serve, one frame-shard deployment per shard); the same queries go over HTTP
(``POST /search``, ``level: frame``, ``frame_codes``) with and without the matched segments, and the served
rankings are compared with the in-process ones.

Usage::

    .venv/bin/python benchmarks/bench_frame_scale.py --videos 40000 160000 700000 --top-n 1000 100 \\
        --serve-shards 2 --out benchmarks/results/frame_scale.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def gallery(rng: np.random.Generator, videos: int, frames: int, bits: int) -> np.ndarray:
    codes = np.repeat(rng.integers(0, 256, size=(videos, bits // 8), dtype=np.uint8), frames, axis=0)
    for b in range(8):  # each bit flipped with probability 3%
        codes ^= ((rng.random(codes.shape, dtype=np.float32) < 0.03).astype(np.uint8) << b)
    return codes.reshape(videos, frames, bits // 8)


def queries(rng: np.random.Generator, codes: np.ndarray, n: int) -> list[np.ndarray]:
    videos, frames, width = codes.shape
    out = []
    for i in range(n):
        if i % 2 == 0:  # an edited copy of a gallery video
            q = codes[int(rng.integers(0, videos))].copy()
            for b in range(8):
                q ^= ((rng.random(q.shape) < 0.02).astype(np.uint8) << b)
        else:  # an unrelated video
            q = np.repeat(rng.integers(0, 256, size=(1, width), dtype=np.uint8), frames, axis=0)
            for b in range(8):
                q ^= ((rng.random(q.shape) < 0.03).astype(np.uint8) << b)
        out.append(q)
    return out


def serve_and_measure(codes: np.ndarray, qs: list[np.ndarray], answers: dict[int, list], shards: int, top_n: int,
                      work: str) -> dict:
    """Write ``codes`` as a sharded frame index, serve it, send ``qs``; latency and agreement with ``answers``."""
    import requests

    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import deploy, serve_cluster_env, service_url
    from vhindex.config import ServeSection
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.index.codes import code_to_hex
    from vhindex.index.frame_shards import write_sharded_frame_index
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    videos, _, width = codes.shape
    ids = [f"v{i:07d}" for i in range(videos)]
    t0 = time.perf_counter()
    write_sharded_frame_index(ids, codes, width * 8, "synthetic", f"{work}/fidx", shards)
    write_s = time.perf_counter() - t0
    # the service also needs a video-level index: a small random one (not measured)
    rng = np.random.default_rng(1)
    with CodesDatasetWriter(f"{work}/vcodes", CodesDatasetMeta(bits=64, model="itq", model_version="synthetic"),
                            overwrite=True, row_group_size=100) as w:
        w.write(ids[:1000], rng.integers(0, 256, size=(1000, 8), dtype=np.uint8))
    build_sharded_index(f"{work}/vcodes", f"{work}/vidx", 2, spec=IndexSpec("flat", {}), overwrite=True)
    port, direct_port = free_ports(2)
    settings = ServeSection(index=f"{work}/vidx", frame_index=f"{work}/fidx", port=port, direct_port=direct_port,
                            shard_cpus=0.1, router_cpus=0.1, app_name="frame-scale", frame_top_n=top_n)
    started = connect_ray(env=serve_cluster_env(settings))
    out: dict = {"shards": shards, "top_n": top_n, "write_s": write_s}
    try:
        t0 = time.perf_counter()
        deploy(settings)
        out["deploy_s"] = time.perf_counter() - t0
        base = service_url(settings)
        session = requests.Session()
        for segments in (False, True):
            lat, same, parts = [], 0, []
            for i, q in enumerate(qs):
                body = {"frame_codes": [code_to_hex(c) for c in q], "level": "frame", "k": 10, "segments": segments}
                t1 = time.perf_counter()
                r = session.post(base + "/search", json=body, timeout=120)
                lat.append(1000 * (time.perf_counter() - t1))
                r.raise_for_status()
                got = r.json()["results"]
                parts.append(r.json()["frame_timing"])
                ref_ids, ref_scores = answers[i]
                same += int([h["video_id"] for h in got] == list(ref_ids)
                            and [h["score"] for h in got] == [float(x) for x in ref_scores])
            key = "segments" if segments else "plain"
            out[key] = {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "same": same,
                        "queries": len(qs), "parts": {k: float(np.median([p[k] for p in parts])) for k in parts[0]}}
            print(key, out[key], flush=True)
    finally:
        from ray import serve

        serve.shutdown()
        if started:
            import ray

            ray.shutdown()
    return out


def run(videos: int, frames: int, bits: int, top_ns: list[int], n_queries: int, n_brute: int,
        seed: int, serve_shards: int = 0, work: str = "") -> tuple[list[dict], dict | None]:
    from vhindex.index.frame_shards import ShardedFrameIndex
    from vhindex.index.frames import FrameLevelIndex

    rng = np.random.default_rng(seed)
    codes = gallery(rng, videos, frames, bits)
    before = rss_mb()
    index = FrameLevelIndex(bits, method="mih")
    index.add([f"v{i:07d}" for i in range(videos)], codes, times=None)
    _ = index.codes, index.frame_videos
    base_mb = rss_mb() - before
    t0 = time.perf_counter()
    index.prepare()
    build_s = time.perf_counter() - t0
    tables_mb = index._mih_tables().nbytes / 2**20
    brute = FrameLevelIndex(bits, method="brute")
    brute.idmap, brute._codes, brute._offsets, brute._times = index.idmap, index.codes, index._offsets, index._times
    sharded, sharded_brute = ShardedFrameIndex([index]), ShardedFrameIndex([brute])
    qs = queries(rng, codes, n_queries)
    rows = []
    for top_n in top_ns:
        sharded.search_batch(qs[:1], 10, top_n=top_n)  # warm
        lat = []
        answers = []
        for q in qs:
            t = time.perf_counter()
            answers.append(sharded.search_batch([q], 10, top_n=top_n)[0])
            lat.append(1000 * (time.perf_counter() - t))
        lat_b = []
        same = 0
        for i, q in enumerate(qs[:n_brute]):
            t = time.perf_counter()
            ref = sharded_brute.search_batch([q], 10, top_n=top_n)[0]
            lat_b.append(1000 * (time.perf_counter() - t))
            same += int(ref[0] == answers[i][0] and np.array_equal(ref[1], answers[i][1]))
        if top_n == top_ns[0]:
            first_answers = dict(enumerate(answers))
        rows.append({"videos": videos, "frames": videos * frames, "bits": bits, "top_n": top_n,
                     "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                     "brute_p50": float(np.median(lat_b)) if lat_b else float("nan"), "same": same,
                     "compared": len(lat_b), "queries": len(qs), "base_mb": base_mb, "tables_mb": tables_mb,
                     "build_s": build_s})
        print(rows[-1], flush=True)
    served = None
    if serve_shards:
        del sharded, sharded_brute, brute, index  # the served shards hold their own copies
        served = serve_and_measure(codes, qs, first_answers, serve_shards, top_ns[0], work)
    return rows, served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, nargs="+", default=[40_000, 160_000, 700_000])
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--bits", type=int, nargs="+", default=[32])
    ap.add_argument("--top-n", type=int, nargs="+", default=[1000, 100])
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--brute-queries", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve-shards", type=int, default=0, help="also serve the largest gallery with this many "
                                                                   "frame shards (0: in process only)")
    ap.add_argument("--work", default="bench-work/frame-scale")
    ap.add_argument("--out", default="benchmarks/results/frame_scale.md")
    args = ap.parse_args()
    rows = []
    served = None
    for bits in args.bits:
        for v in args.videos:
            last = bits == args.bits[-1] and v == args.videos[-1]
            got, s = run(v, args.frames, bits, args.top_n, args.queries, args.brute_queries, args.seed,
                         args.serve_shards if last else 0, os.path.abspath(args.work))
            rows += got
            served = s or served
    lines = [
        "# Frame-level copy search at scale",
        "",
        f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} cores; "
        f"`.venv/bin/python benchmarks/bench_frame_scale.py --videos {' '.join(map(str, args.videos))} "
        f"--bits {' '.join(map(str, args.bits))} --top-n {' '.join(map(str, args.top_n))} "
        f"--queries {args.queries} --brute-queries {args.brute_queries}"
        + (f" --serve-shards {args.serve_shards}" if args.serve_shards else "") + "`",
        "",
        f"One {args.frames}-frame query video, in process (top-N frames per query frame + merge + Algorithm 1 + "
        "ranking, k = 10). MIH: multi-index hashing, exact; brute: the same search by brute force, on the first "
        "queries only; `same`: queries whose ranking and scores are identical.",
        "",
        "| videos | frame codes | bits | N | MIH p50 ms | MIH p99 ms | brute p50 ms | brute / MIH | same | "
        "index MB | MIH tables MB | tables built in s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['videos']:,} | {r['frames']:,} | {r['bits']} | {r['top_n']} | {r['p50']:.1f} | "
                     f"{r['p99']:.1f} | {r['brute_p50']:.0f} | {r['brute_p50'] / r['p50']:.0f}x | "
                     f"{r['same']}/{r['compared']} | {r['base_mb']:.0f} | {r['tables_mb']:.0f} | {r['build_s']:.1f} |")
    if served:
        lines += ["", f"**Served** ({args.videos[-1]:,} videos, {args.bits[-1]} bits, {served['shards']} frame shards, "
                  f"N = {served['top_n']}, local Ray + Serve on the same machine; index written in "
                  f"{served['write_s']:.0f} s, deployed in {served['deploy_s']:.0f} s): `POST /search` with "
                  f"`level: frame`, 25 `frame_codes`, k = 10, over HTTP.", "",
                  "| answer | p50 ms | p99 ms | rankings and scores equal to in process | router's breakdown, medians "
                  "(ms): shards' top-N / merge + rank / ids / segments |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for key, what in (("plain", "videos and scores (`segments: false`)"),
                          ("segments", "with the matched segments")):
            r = served[key]
            b = r["parts"]
            lines.append(f"| {what} | {r['p50']:.1f} | {r['p99']:.1f} | {r['same']}/{r['queries']} | "
                         f"{b['top_frames_ms']:.1f} / {b['rank_ms']:.1f} / {b['ids_ms']:.1f} / {b['segments_ms']:.1f} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
