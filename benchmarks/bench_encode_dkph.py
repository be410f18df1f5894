"""Benchmark DKPH student encoding throughput (videos/s) on this machine's CPU (or GPU).

Paper-sized setting by default: 64 bits, M=25 frames, D=4096 features, d=256, one 1-head layer,
batches of 1,024 videos, float32 inputs, random weights (throughput does not depend on training).
Measures :meth:`vhindex.models.DKPH.encode_packed` end to end (shape checks, float32 conversion,
eval-mode forward of encoder + hash layer, sign and bit packing). Goal on CPU: >= 400 videos/s.

Usage::

    python benchmarks/bench_encode_dkph.py                        # 2 torch threads, 3 timed batches
    python benchmarks/bench_encode_dkph.py --threads 4 --repeats 5 --device auto

Prints a markdown block with timings and machine info.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time

import numpy as np
import torch

from vhindex.models import DKPH


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed batches (after one warm-up batch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = DKPH(args.bits, num_frames=args.frames, feature_dim=args.dim, hidden=args.hidden,
                 ffn=4 * args.hidden, device=args.device)
    frames = np.random.default_rng(args.seed).standard_normal(
        (args.batch, args.frames, args.dim), dtype=np.float32).astype(args.dtype)

    model.encode_packed(frames)  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.encode_packed(frames)
        times.append(time.perf_counter() - t0)
    best, median = min(times), float(np.median(times))

    print("```")
    print(f"bench_encode_dkph  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}  threads={torch.get_num_threads()}  device={model.device}  "
          f"numpy {np.__version__}  python {platform.python_version()}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"load={os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}")
    print(f"bits={args.bits} batch={args.batch} M={args.frames} D={args.dim} d={args.hidden} "
          f"dtype={args.dtype} input={frames.nbytes / 2**20:.0f} MiB  params={sum(p.numel() for p in model.net.parameters()):,}")
    print(f"per batch: best {best:.3f} s  median {median:.3f} s  ({args.repeats} timed)")
    print(f"throughput: {args.batch / median:,.0f} videos/s (median)  {args.batch / best:,.0f} videos/s (best)")
    print("```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
