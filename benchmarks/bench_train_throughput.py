"""Training throughput of every learned model, side by side in one process (videos per second).

Each model trains ``--steps`` optimizer steps (after ``--warmup`` untimed ones) on the same batches of
the fashion benchmark's features (M = 10 frames, D = 1,280), with the settings of
``configs/bench/quality.yaml`` (``bench.method_params``): ConMH / GCMH with their two masked views (GCMH
also with its neighbour view), DKPH / BTH with their pair of masked clips (the teacher's cost is a BTH
without the pair), MCMSH with its pair plus L_quad's three extra clips. Encoding: ``model.encode`` of the
same batch (no grad, eval mode). Inputs are in memory, so this measures the model's compute, not data loading (the
product's loop streams Parquet; its per-epoch ``videos_per_s`` is in each stage's ``metrics.jsonl``).

    .venv/bin/python benchmarks/bench_train_throughput.py --threads 2

UTS (pixels, not features) is measured apart, in frames per second of its student network
(``--uts-image-size``, ``--uts-batch``), beside the Lite0 CNN the feature-based models' extraction runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vhindex.config import load_config  # noqa: E402
from vhindex.data import FrameDataset  # noqa: E402
from vhindex.models import build_model  # noqa: E402
from vhindex.models.dvhcm import intra_pair_split  # noqa: E402
from vhindex.models.losses import bth_loss, dkph_loss, dvhcm_loss, mcmsh_loss, nph_loss  # noqa: E402
from vhindex.models.nets import mask_frames  # noqa: E402
from vhindex.train.contrastive import contrastive_step  # noqa: E402


def _step(name: str, model, net: torch.nn.Module, x: torch.Tensor, gen: torch.Generator, params: dict) -> torch.Tensor:
    """One training loss of ``name`` on the batch ``x`` (its partners: the batch reversed)."""
    if name in ("conmh", "gcmh"):
        return contrastive_step(model, net, x, gen, x.flip(0) if name == "gcmh" else None)["total"]
    if name == "dvhcm":  # an intra-pair (two halves of the frames) per video, labels drawn at random
        first, second = intra_pair_split(len(x), x.shape[1], gen)
        y = torch.nn.functional.one_hot(torch.arange(len(x)) % params["num_classes"], params["num_classes"]).float()
        return dvhcm_loss(net(x, first), net(x, second), y, **model.loss_kwargs())["total"]
    if name == "nph":  # no masking; the pair's two forward passes, encoder and decoder LSTMs
        return nph_loss(net(x), net(x.flip(0)), x, x.flip(0))["total"]
    out1, out2 = net(mask_frames(x, gen)), net(mask_frames(x.flip(0), gen))
    s = torch.ones(len(x))
    c = torch.zeros(len(x), params.get("hidden", 256))
    if name == "dkph":
        return dkph_loss(out1, out2, x, x.flip(0), s, c, c)["total"]
    if name == "mcmsh":  # the pair plus L_quad's neighbour and two non-neighbours: five forward passes
        quad = {k: net(mask_frames(x.roll(r, 0), gen))["h"] for k, r in (("h_pos", 1), ("h_neg1", 2), ("h_neg2", 3))}
        return mcmsh_loss(out1, out2, s, c, c, **quad)["total"]
    return bth_loss(out1, out2, x, x.flip(0), s, c, c)["total"]


def _uts_throughput(args: argparse.Namespace) -> list[tuple[str, int, float, float]]:
    """UTS's student (training and encoding) and the Lite0 extraction CNN (encoding), frames per second."""
    from vhindex.features.backbones import UTSStudentBackbone, build_backbone
    from vhindex.models.uts import UTS_DEFAULTS, uts_loss
    from vhindex.train.uts import augment_frames

    torch.manual_seed(0)
    s, n = args.uts_image_size, args.uts_batch
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, s, s, 3), dtype=np.uint8))
    lite0 = build_backbone("efficientnet_lite0")
    student = UTSStudentBackbone.from_lite0(build_backbone("efficientnet_lite0"), UTS_DEFAULTS["out_dim"],
                                            UTS_DEFAULTS["width"]).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(n, UTS_DEFAULTS["out_dim"])
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0 = time.perf_counter()
        aug = augment_frames(frames, gen, rotation=15.0, crop_scale=0.5, colour=0.4)
        loss = uts_loss(student(student.normalise(aug)), student(student.preprocess(frames)), targets)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_fps = args.steps * n / (time.perf_counter() - t0)
    rows = []
    for name, net, fps in (("uts student", student, train_fps), ("efficientnet_lite0 (extraction)", lite0, 0.0)):
        net.eval()
        with torch.inference_mode():
            net(net.preprocess(frames))
            t0 = time.perf_counter()
            for _ in range(args.steps):
                net(net.preprocess(frames))
        enc = args.steps * n / (time.perf_counter() - t0)
        rows.append((name, sum(t.numel() for t in net.parameters()), fps, enc))
        print(f"{name:32s} {fps:8.1f} training frames/s  {enc:8.1f} encoded frames/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--config", default="configs/bench/quality.yaml")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["conmh", "gcmh", "dkph", "bth", "mcmsh", "nph", "dvhcm"])
    p.add_argument("--report", default="benchmarks/results/train_throughput.md")
    p.add_argument("--uts-image-size", type=int, default=128, help="UTS's pixel throughput at this size (0: skip)")
    p.add_argument("--uts-batch", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    ds = FrameDataset.open(f"{cfg.bench.work.rstrip('/')}/fashion/features/train")
    x = torch.from_numpy(np.concatenate([b.features for b in ds.iter_batches(
        args.batch * 2, columns=("video_id", "features"))][:1]).astype(np.float32))[: args.batch]
    m, d = x.shape[1], x.shape[2]
    rows = []
    for name in args.models:
        params = {**cfg.bench.method_params.get(name, {}), "num_frames": m, "feature_dim": d}
        if name == "dvhcm":
            params["num_classes"] = int(ds.meta.num_classes or 10)
        torch.manual_seed(0)
        model = build_model(name, args.bits, device="cpu", **params)
        net = model.net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)

        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0 = time.perf_counter()
            loss = _step(name, model, net, x, gen, params)
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        vps = args.steps * len(x) / seconds
        n_params = sum(t.numel() for t in net.parameters())
        frames = x.numpy()
        model.encode(frames)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model.encode(frames)
        enc_vps = args.steps * len(x) / (time.perf_counter() - t0)
        rows.append((name, n_params, vps, enc_vps))
        print(f"{name:6s} {n_params / 1e6:6.2f} M parameters  {vps:8.1f} training videos/s  {enc_vps:8.1f} encoded "
              "videos/s", flush=True)
    uts_rows = _uts_throughput(args) if args.uts_image_size else []
    text = "\n".join([
        f"# Training throughput ({dt.datetime.now().isoformat(timespec='seconds')})", "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads; "
        f"command: `python benchmarks/bench_train_throughput.py {' '.join(argv or sys.argv[1:])}`", "",
        f"Fashion features (M={m}, D={d}), {args.bits} bits, batch {len(x)}, {args.steps} timed steps after "
        f"{args.warmup} warm-up; models as in `{args.config}` (bench.method_params). GCMH's epoch also rebuilds its "
        "self-distilled graph (one encoding pass + k-means over the training clips), not included here.", "",
        "| model | parameters | training videos/s | encoding videos/s |", "|---|---:|---:|---:|",
        *[f"| {n} | {p / 1e6:.2f} M | {v:,.0f} | {e:,.0f} |" for n, p, v, e in rows], "",
        *(["UTS trains on pixels: frames per second at "
           f"{args.uts_image_size} x {args.uts_image_size}, batch {args.uts_batch} frames (training: the augmentation, "
           "the student on the augmented and the plain frames, backward; the teacher's outputs are precomputed once). "
           "Encoding a video = its frames through the CNN, then LSH; the feature-based models above pay the same "
           f"CNN cost (EfficientNet-Lite0) in extraction. Per video at M = {m} frames:", "",
           "| network | parameters | training frames/s | encoding frames/s | training videos/s | encoding videos/s |",
           "|---|---:|---:|---:|---:|---:|",
           *[f"| {n} | {p / 1e6:.2f} M | {v:,.0f} | {e:,.0f} | {v / m:,.1f} | {e / m:,.1f} |" if v else
             f"| {n} | {p / 1e6:.2f} M | (frozen) | {e:,.0f} | | {e / m:,.1f} |" for n, p, v, e in uts_rows], ""]
          if uts_rows else [])])
    if args.report:
        Path(args.report).write_text(text)
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
