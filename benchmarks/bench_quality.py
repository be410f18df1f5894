"""Retrieval quality of LSH / ITQ / BTH / DKPH on the synthetic ``demo`` preset, mean +- std over seeds.

Protocol: the paper's mAP@K (AP@K divided by K, as the published BTH / DKPH code computes it) at
K = 5, 20, 40, 60, 80, 100, for 16 / 32 / 64-bit codes, plus DKPH ablations at 64 bits (no
temporal layer, no L_tsim, no L_bsim, hash layer on the mean-pooled instead of the flattened encoder
states); ``--hash-input`` sets the hash input of every other DKPH run. The dataset (``demo`` preset:
5,000 train / 500 query / 5,000 database videos, M=25 frames x D=256 dims) is synthesized once with
seed 0; each seed re-seeds every model (initialisation, masking, pair sampling, shuffling; LSH's
projections, ITQ's rotation).

Within a seed the teacher (reconstruction-only BTH net at ``--teacher-bits``), its embeddings and
the anchor graph are trained once, under ``<work>/seed<S>/``, and shared by every student (BTH and
DKPH at every code length, ablations included): the teacher stage's fingerprint depends on
``train.teacher_bits``, not on ``train.bits``, so it is skipped after the first student. Students
train under ``<work>/seed<S>/runs/<name>``.

``--throughput-only`` instead measures student training throughput (videos/s, DKPH, 2 epochs: cold + warm) at the
paper's dims (M=25, D=4096, d=256) on a small synthetic set.

Usage::

    python benchmarks/bench_quality.py --epochs 8 --teacher-epochs 8 --report bench_quality.md
    python benchmarks/bench_quality.py --throughput-only --tp-videos 512

Prints markdown tables (and writes them to ``--report``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vhindex.config import Config, config_from_dict
from vhindex.data import FrameDataset
from vhindex.data.synth import ensure_synthetic
from vhindex.eval import EvalResult, evaluate
from vhindex.inprocess import encode_in_memory, fit_model, labels_for
from vhindex.train.recipes import (
    build_teacher_graph,
    check_datasets,
    train_bth,
    train_student,
    train_teacher,
    write_teacher_embeddings,
)

KS = [5, 20, 40, 60, 80, 100]
SPLITS = ("train", "query", "database")
ABLATIONS: dict[str, dict[str, Any]] = {
    "dkph (full)": {},
    "dkph w/o temporal layer": {"temporal": False},
    "dkph w/o L_tsim": {"use_tsim": False},
    "dkph w/o L_bsim": {"use_bsim": False},
    "dkph hash on mean-pooled states": {"hash_input": "mean"},
}


def _tag(flags: dict[str, Any]) -> str:
    """Run-folder suffix of a set of train flags, e.g. ``temporal0`` or ``hash_inputmean``."""
    return "-".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in flags.items())


def base_config(args: argparse.Namespace, seed: int, out_dir: str, data_url: str, **train: Any) -> Config:
    """The config of one run: the ``--preset`` data at ``data_url``, training settings from ``args``.

    Args:
        args: parsed command line.
        seed: ``run.seed`` (model seed).
        out_dir: ``run.output_dir``.
        data_url: folder holding the ``train`` / ``query`` / ``database`` frame datasets.
        **train: extra ``train`` section values (``bits``, ablation flags, ...).

    Returns:
        The validated config.
    """
    return config_from_dict({
        "run": {"seed": seed, "output_dir": out_dir},
        "synth": {"preset": args.preset, "row_group_size": 500},
        "data": {s: f"{data_url}/{s}" for s in SPLITS} | {"batch_size": 1024},
        "eval": {"ks": KS, "protocol": "paper", "precision_ns": [10], "pr_curve": False, "plots": False},
        "graph": {"kmeans": {"n_iter": 20}},
        "train": {
            "model": "dkph", "bits": 64, "teacher_bits": args.teacher_bits,
            "num_frames": args.frames, "feature_dim": args.dim, "hidden": args.hidden, "ffn": 4 * args.hidden,
            "teacher_epochs": args.teacher_epochs, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "anchors": args.anchors, "graph_executor": "sequential", "device": "cpu",
            "eval_every": 0, "hash_input": args.hash_input, **train,
        },
    }, source="bench_quality")


def _eval(model: Any, ds: dict[str, FrameDataset]) -> EvalResult:
    q, db = ds["query"], ds["database"]
    qi, qc = encode_in_memory(model, q)
    di, dc = encode_in_memory(model, db)
    n = db.meta.num_classes
    return evaluate(dc, qc, labels_for(di, db, n), labels_for(qi, q, n), ks=KS, protocol="paper", pr=False,
                    precision_ns=[10])


def run_seed(args: argparse.Namespace, seed: int, data_url: str, log, *, main: bool = True,
             ablations: bool = False) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """The methods of one seed: every method x bits (``main``) and / or the 64-bit DKPH ablations.

    Shared stages (teacher, embeddings, graph) and finished students are reused from the seed folder.

    Returns:
        ``({run name: {K: mAP@K}}, {run name: seconds})``; shared stages are named ``teacher``,
        ``embeddings`` and ``graph``.
    """
    seed_dir = f"{args.work}/seed{seed}"
    cfg = base_config(args, seed, seed_dir, data_url)
    ds = check_datasets(cfg)
    maps: dict[str, dict[int, float]] = {}
    secs: dict[str, float] = {}

    t0 = time.perf_counter()
    teacher, _ = train_teacher(cfg, ds, progress=False)
    secs["teacher"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = write_teacher_embeddings(cfg, teacher, ds["train"])
    secs["embeddings"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = build_teacher_graph(cfg, emb)
    secs["graph"] = time.perf_counter() - t0
    log(f"  seed {seed}: teacher {secs['teacher']:.1f}s, embeddings {secs['embeddings']:.1f}s, "
        f"graph {secs['graph']:.1f}s")

    def record(name: str, t_start: float, res: EvalResult) -> None:
        maps[name] = dict(res.map_at_k)
        secs[name] = time.perf_counter() - t_start
        log(f"  seed {seed}: {name:<28s} {secs[name]:6.1f}s  mAP@20 {maps[name][20]:.4f}  "
            f"mAP@100 {maps[name][100]:.4f}")

    for bits in args.bits if main else ():
        for method in ("lsh", "itq"):
            t0 = time.perf_counter()
            model = fit_model(method, bits, ds["train"], seed=seed, batch_size=1024)
            record(f"{method}-{bits}", t0, _eval(model, ds))
        for kind, trainer in (("bth", train_bth), ("dkph", train_student)):
            t0 = time.perf_counter()
            suffix = f"-hash_input{args.hash_input}" if kind == "dkph" and args.hash_input != "flatten" else ""
            vcfg = base_config(args, seed, f"{seed_dir}/runs/{kind}-{bits}{suffix}", data_url, bits=bits)
            model, _ = trainer(vcfg, ds, graph_url=graph, progress=False)
            record(f"{kind}-{bits}", t0, _eval(model, ds))
    if ablations:
        for label, extra in ABLATIONS.items():
            if not extra:  # "dkph (full)" is the main table's dkph-64
                continue
            t0 = time.perf_counter()
            flags = {"hash_input": args.hash_input, **extra}
            # same folder as the main run when the flags match it (hash_input=mean with --hash-input mean)
            tag = _tag({k: v for k, v in flags.items() if not (k == "hash_input" and v == "flatten")})
            vcfg = base_config(args, seed, f"{seed_dir}/runs/dkph-64-{tag}", data_url, bits=64, **flags)
            model, _ = train_student(vcfg, ds, graph_url=graph, progress=False)
            record(label, t0, _eval(model, ds))
    return maps, secs


def _fmt(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 1:
        return f"{v[0]:.4f}"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def quality_tables(per_seed: dict[int, dict[str, dict[int, float]]], names: Sequence[str]) -> str:
    """Markdown table: one row per run name, one column per mAP@K (mean ± sample std over seeds).

    Args:
        per_seed: ``{seed: {run name: {K: mAP}}}``.
        names: rows, in order (a name no seed has is left out).

    Returns:
        The table.
    """
    lines = ["| method | seeds | " + " | ".join(f"mAP@{k}" for k in KS) + " |",
             "|---|---|" + "---|" * len(KS)]
    for name in names:
        runs = [m[name] for m in per_seed.values() if name in m]
        if not runs:
            continue
        cells = [_fmt([r[k] for r in runs]) for k in KS]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seconds_table(per_seed_secs: dict[int, dict[str, float]]) -> str:
    """Markdown table of wall seconds per run (columns: seeds)."""
    seeds = sorted(per_seed_secs)
    names: list[str] = []
    for s in seeds:
        names += [n for n in per_seed_secs[s] if n not in names]
    lines = ["| run | " + " | ".join(f"seed {s} (s)" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{per_seed_secs[s][n]:.1f}" if n in per_seed_secs[s] else "-"
                                              for s in seeds) + " |")
    return "\n".join(lines)


def throughput(args: argparse.Namespace, log) -> str:
    """DKPH student training throughput (videos/s per epoch; 2 epochs, the first one cold) at M x D =
    ``--tp-frames`` x ``--tp-dim``."""
    root = f"{args.work}/throughput"
    data_url = f"{root}/data"
    n = args.tp_videos
    cfg = config_from_dict({
        "run": {"seed": 0, "output_dir": root},
        "synth": {"preset": "demo", "row_group_size": 128,
                  "overrides": {"train": n, "query": 16, "database": 16, "num_frames": args.tp_frames,
                                "feature_dim": args.tp_dim}},
    }, source="bench_quality throughput")
    ensure_synthetic(cfg, data_url, sys.stdout)
    args_tp = argparse.Namespace(**{**vars(args), "frames": args.tp_frames, "dim": args.tp_dim, "hidden": 256,
                                    "teacher_epochs": 0, "epochs": 2, "anchors": min(args.anchors, n // 4)})
    cfg = base_config(args_tp, 0, f"{root}/run", data_url, bits=64)
    ds = check_datasets(cfg)
    teacher, _ = train_teacher(cfg, ds, progress=False)  # 0 epochs: a random teacher is enough for timing
    graph = build_teacher_graph(cfg, write_teacher_embeddings(cfg, teacher, ds["train"]))
    _, res = train_student(cfg, ds, graph_url=graph, progress=False)
    per_epoch = [(m["seconds"], m.get("videos", n)) for m in (res.metrics if res is not None else [])]
    line = (f"DKPH student training, {n} videos, M={args.tp_frames}, D={args.tp_dim}, d=256, 64 bits, "
            f"batch {args.batch_size}, {torch.get_num_threads()} torch threads (two forward/backward passes per "
            "video: item + graph partner): " + ", ".join(
                f"epoch {i} {s:.1f}s = **{v / s:.1f} videos/s**" + (" (cold: JIT, first reads)" if i == 0 else "")
                for i, (s, v) in enumerate(per_epoch)))
    log(line)
    return line


def report(args: argparse.Namespace, per_seed: dict[int, dict[str, dict[int, float]]],
           per_secs: dict[int, dict[str, float]], total_s: float) -> str:
    """The markdown report of the seeds run so far (settings, mAP table, ablation table, seconds)."""
    names = [f"{m}-{b}" for b in args.bits for m in ("lsh", "itq", "bth", "dkph")]
    settings = (f"Data: synthetic `{args.preset}` preset (seed 0), M={args.frames}, D={args.dim}; "
                f"models: d={args.hidden}, teacher {args.teacher_epochs} epochs at {args.teacher_bits} bits, "
                f"students {args.epochs} epochs (released schedule: 49), batch {args.batch_size}, "
                f"lr {args.lr}, {args.anchors} anchors, DKPH hash input `{args.hash_input}`; seeds {sorted(per_seed)}; "
                "paper-protocol mAP@K, mean ± sample std over seeds.")
    ablation_rows = {
        s: {label: m.get("dkph-64") if label == "dkph (full)" else m.get(label) for label in ABLATIONS
            if (m.get("dkph-64") if label == "dkph (full)" else m.get(label)) is not None}
        for s, m in per_seed.items() if s in args.ablation_seeds}
    return (settings + "\n\n## mAP@K\n\n" + quality_tables(per_seed, names)
            + f"\n\n## DKPH ablations (64 bits, seeds {sorted(ablation_rows)})\n\n"
            + quality_tables(ablation_rows, list(ABLATIONS))
            + "\n\n## Seconds per run (2 shared CPU cores; students include encode + eval)\n\n"
            + seconds_table(per_secs) + f"\n\ntotal {total_s:.0f}s\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables and write them to ``--report``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "vhindex-bench-quality"),
                   help="work folder (runs are reused if complete)")
    p.add_argument("--report", default="benchmarks/results/bench_quality.md", help="markdown output file")
    p.add_argument("--preset", default="demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ablation-seeds", type=int, nargs="*", default=None,
                   help="seeds that also run the ablations (default: the first of --seeds)")
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128, help="d (the paper's is 256; 128 keeps CPU runs short)")
    p.add_argument("--teacher-bits", type=int, default=64)
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="student epochs (the released schedule is 49)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="short schedules: 1e-3 (released: 3e-4)")
    p.add_argument("--anchors", type=int, default=500)
    p.add_argument("--hash-input", choices=["flatten", "mean"], default="flatten",
                   help="DKPH hash layer input of the main table and the other ablations (released: flatten)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--tp-videos", type=int, default=512)
    p.add_argument("--tp-frames", type=int, default=25)
    p.add_argument("--tp-dim", type=int, default=4096)
    args = p.parse_args(argv)
    if args.ablation_seeds is None:
        args.ablation_seeds = list(args.seeds[:1])
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    header = (f"# bench_quality ({dt.datetime.now().isoformat(timespec='seconds')})\n\n"
              f"machine: {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{args.threads} torch threads\n\ncommand: `python benchmarks/bench_quality.py "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    if args.throughput_only:
        text = header + "\n## Training throughput\n\n" + throughput(args, log) + "\n"
    else:
        data_url = f"{args.work}/data"
        ensure_synthetic(base_config(args, 0, args.work, data_url), data_url, sys.stdout)
        per_seed: dict[int, dict[str, dict[int, float]]] = {}
        per_secs: dict[int, dict[str, float]] = {}
        # Every seed's main table first, then the ablations (partial reports after each step).
        steps = [(s, True, False) for s in args.seeds] + [(s, False, True) for s in args.ablation_seeds]
        for i, (seed, main_runs, abl) in enumerate(steps):
            maps, secs = run_seed(args, seed, data_url, log, main=main_runs, ablations=abl)
            per_seed.setdefault(seed, {}).update(maps)
            per_secs.setdefault(seed, {}).update({k: v for k, v in secs.items() if k not in per_secs[seed]})
            text = header + "\n" + report(args, per_seed, per_secs, time.perf_counter() - t_all)
            if i != len(steps) - 1:
                Path(args.report).parent.mkdir(parents=True, exist_ok=True)
                Path(args.report).write_text(text + "\n(partial: still running)\n")
    print("\n" + text, flush=True)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text)
    print(f"written to {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
