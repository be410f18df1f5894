"""The ``vhindex`` command line: one console script with subcommands.

Every subcommand that runs a stage takes ``--config FILE`` plus trailing dotted overrides
(``model.bits=64 run.output_dir=s3://bucket/run``). Cluster-backed commands import ``cluster``
lazily inside the command (through :mod:`vhindex.app.engines` / :mod:`vhindex.app.jobs`), so the core
CLI works without Ray or Dask.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vhindex.config import Config, ConfigError, load_config, serve_settings

log = logging.getLogger("vhindex")


def _storage_options(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--storage-options must be a JSON object: {err}") from None
    if not isinstance(value, dict):
        raise SystemExit("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def _add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, help="YAML config file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")


# --------------------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    from vhindex.app.demo import run_demo

    cfg = _config(args)
    run_demo(cfg, out=sys.stdout)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from vhindex.data.synth import ensure_synthetic

    cfg = _config(args)
    ensure_synthetic(cfg, args.out or f"{cfg.run.output_dir.rstrip('/')}/data", out=sys.stdout)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vhindex.data import DatasetValidationError, validate_dataset

    try:
        report = validate_dataset(
            args.url,
            _storage_options(args.storage_options),
            expected_num_frames=args.frames,
            expected_feature_dim=args.dim,
            check_values=not args.no_values,
        )
    except DatasetValidationError as err:
        print(err, file=sys.stderr)
        return 1
    print(report)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from vhindex.data import FrameDataset
    from vhindex.inprocess import fit_model

    cfg = _config(args)
    if not cfg.data.train:
        raise ConfigError("fit", [("data.train", "required: URL of the training frame-feature dataset")])
    train = FrameDataset.open(cfg.data.train, cfg.data.storage_options or None)
    if args.per_frame:  # a frame model: every sampled frame is a training sample of its own (M = 1)
        from vhindex.inprocess import frame_batches
        from vhindex.models import build_model

        d = train.meta.feature_dim
        model = build_model(cfg.model.name, cfg.model.bits, **(cfg.model.params or {}))
        model.fit(lambda: (b.reshape(-1, 1, d) for b in frame_batches(train, cfg.data.batch_size)), seed=cfg.run.seed)
    else:
        model = fit_model(cfg.model.name, cfg.model.bits, train, params=cfg.model.params, seed=cfg.run.seed,
                          batch_size=cfg.data.batch_size)
    out = args.out or f"{cfg.run.output_dir.rstrip('/')}/model"
    model.save(out, cfg.run.storage_options or None)
    print(f"saved {model.name}-{model.bits} (version {model.version()}) to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``vhindex train``: the training recipe (what ``jobs/train_dkph.py`` runs; Ray Train or in-process)."""
    from vhindex.app.jobs import run_training

    logging.getLogger().setLevel(logging.INFO)
    return run_training(_config(args), progress=not args.no_progress)


def _pipeline_overrides(args: argparse.Namespace, section: str, flags: dict[str, str]) -> list[str]:
    """Turn command-line flags into dotted overrides of ``section`` (flags win over --config)."""
    out = []
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{section}.{key}={json.dumps(value) if not isinstance(value, str) else value}")
    if getattr(args, "storage_options", None):
        out.append(f"{section}.storage_options={args.storage_options}")
    return out


def _run_pipeline(kind: str, args: argparse.Namespace, flags: dict[str, str]) -> int:
    from vhindex.app.engines import run_from_config

    cfg = load_config(args.config, [*args.overrides, *_pipeline_overrides(args, kind, flags)])
    try:
        report = run_from_config(kind, cfg, stream=sys.stderr)
    except FileExistsError as err:
        print(f"vhindex {kind}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"vhindex {kind}: error: {err}", file=sys.stderr)
        return 2
    print(report.summary_line())
    return report.exit_code


def cmd_encode(args: argparse.Namespace) -> int:
    return _run_pipeline("encode", args, {"model": "model", "frames": "frames", "out": "out", "out_root": "out_root",
                                          "batch_size": "batch_size", "engine": "pipeline.engine"})


def cmd_extract(args: argparse.Namespace) -> int:
    return _run_pipeline("extract", args, {"listing": "listing", "out": "out", "engine": "pipeline.engine",
                                           "backbone": "backbone", "num_frames": "num_frames",
                                           "image_size": "image_size"})


def cmd_index_sharded(args: argparse.Namespace) -> int:
    """``vhindex index sharded`` (alias ``build-index``): codes -> the sharded serving index;
    ``build-index --level frame``: ``vhindex index frames``."""
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    if getattr(args, "level", "video") == "frame":
        missing = [f"--{k}" for k in ("frames", "model", "out") if not getattr(args, k, None)]
        if missing or args.codes:
            raise ConfigError("command line", [("build-index --level frame",
                                                f"needs --frames, --model and --out, not --codes (missing: {missing})")])
        args.shards = args.shards or 1
        return cmd_index_frames(args)
    flags = {"codes": "codes", "out": "out", "shards": "num_shards", "type": "type", "model": "model",
             "mask_ratio": "mask_ratio"}
    cfg = load_config(args.config, [*args.overrides, *_pipeline_overrides(args, "index", flags)])
    ix = cfg.index
    for key in ("codes", "out"):
        if getattr(ix, key) is None:
            raise ConfigError("command line", [(f"index.{key}", f"required (--{key} URL)")])
    build_sharded_index(ix.codes, ix.out, ix.num_shards, spec=IndexSpec(ix.type, dict(ix.params)),
                        so=ix.storage_options or None, threads=ix.threads)
    from vhindex.index.sharded import ShardedIndex

    info = ShardedIndex.open(ix.out, ix.storage_options or None).info()
    from vhindex.app.masks import attach_model_masks

    mask_url = attach_model_masks(ix, int(info["bits"]))
    if mask_url:
        info["mask_table"] = mask_url
    print(json.dumps(info, default=str, sort_keys=True))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import time

    from cluster.runtime import connect_ray
    from cluster.serve import deploy, direct_endpoints, proxy_url, serve_cluster_env

    settings = serve_settings(args.serve_config, args.overrides, index=args.index, port=args.port, host=args.host)
    started = connect_ray(env=serve_cluster_env(settings))
    try:
        deploy(settings)
        # only URLs a client on this machine can reach (direct_endpoints probes each one)
        print(f"vhindex serving {settings.index} at {proxy_url(settings)}{settings.route_prefix} "
              "(POST /search, /search/batch; GET /healthz, /info) -- Ctrl-C stops", flush=True)
        direct = direct_endpoints(settings.app_name) if settings.fast_path else []
        if direct:
            print("  fast path (router replicas' own ports, no proxy hop): " + ", ".join(direct), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        from ray import serve

        serve.shutdown()
        if started:
            import ray

            ray.shutdown()


def cmd_index_frames(args: argparse.Namespace) -> int:
    """``vhindex index frames``: frame features + a frame model -> a sharded frame-level index."""
    from vhindex.index.frame_shards import build_sharded_frame_index

    manifest = build_sharded_frame_index(args.frames, args.model, args.out, args.shards,
                                         storage_options=_storage_options(args.storage_options),
                                         overwrite=args.overwrite)
    print(f"indexed {manifest['ntotal_frames']} frames of {manifest['num_videos']} videos ({manifest['bits']} bits) in "
          f"{manifest['num_shards']} shards -> {args.out} (index version {manifest['index_version']})")
    return 0


def cmd_index_compact(args: argparse.Namespace) -> int:
    """``vhindex index compact``: fold the update log into a new base index (serve it with a hot swap)."""
    from vhindex.index.live import compact

    out = compact(args.index, args.log or f"{args.index.rstrip('/')}/_updates", args.out,
                  storage_options=_storage_options(args.storage_options))
    print(f"compacted {out['folded_updates']} updates into {out['videos']} videos -> {args.out} (index version "
          f"{out['index_version']}); deploy it with serve.index={args.out} and the same serve.update_log")
    return 0


def cmd_deploy_render(args: argparse.Namespace) -> int:
    """``vhindex deploy render``: infra/ files (KubeRay manifests, launcher YAML) from configs/deploy/cluster.yaml."""
    from vhindex.app.deploy import check, load_spec, render

    targets = ("kuberay", "launcher") if args.target == "all" else (args.target,)
    files = render(load_spec(args.config), args.root, args.config, targets)
    if args.check:
        stale = check(files, args.out)
        if stale:
            print("out of date (run `vhindex deploy render` again): " + ", ".join(stale), file=sys.stderr)
            return 1
        print(f"{len(files)} files in {args.out} match {args.config}")
        return 0
    for rel, text in files.items():
        path = Path(args.out) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
    return 0


def cmd_index_flat(args: argparse.Namespace) -> int:
    """``vhindex index flat``: codes -> one flat index file (what ``vhindex query`` reads)."""
    from vhindex.data import CodesDataset
    from vhindex.index import BinaryFlatIndex

    so = _storage_options(args.storage_options)
    codes = CodesDataset.open(args.codes, so)
    ids, packed = codes.read_all()
    index = BinaryFlatIndex(codes.meta.bits)
    index.add(ids, packed)
    index.save(args.out, so)
    print(f"indexed {index.ntotal} codes of {codes.meta.bits} bits -> {args.out}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from vhindex.index import BinaryFlatIndex
    from vhindex.index.codes import hex_to_code

    so = _storage_options(args.storage_options)
    index = BinaryFlatIndex.load(args.index, so)
    if args.code:
        q = hex_to_code(args.code, index.bits)[None, :]
    else:
        q = index.reconstruct_ids([args.video_id])
    dist, ids = index.search_ids(q, args.k)
    rows = [{"video_id": v, "hamming": int(d)} for d, v in zip(dist[0], ids[0], strict=False) if v is not None]
    print(json.dumps(rows, indent=1))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Query a running service (``vhindex serve``) with :class:`vhindex.client.Client`."""
    import os

    from vhindex.client import Client, ServiceError

    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise SystemExit(f"--token-env {args.token_env}: that environment variable is empty or unset")
    with Client(args.service, token=token, timeout_s=args.timeout, retries=args.retries) as client:
        try:
            res = client.search(code=args.code, video_id=args.video_id, video=args.video, url=args.url, k=args.k)
        except ServiceError as err:
            print(f"vhindex search: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(res.raw, indent=1))
        return 0
    for rank, hit in enumerate(res.hits, 1):
        print(f"{rank:4d}  {hit.distance:4d}  {hit.video_id}")
    if res.partial:
        print(f"partial answer: shards {res.missing_shards} did not answer", file=sys.stderr)
    if res.timing:
        print("timing: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timing.items()), file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vhindex.eval import evaluate, markdown_table, write_report
    from vhindex.inprocess import load_codes_with_labels

    cfg = _config(args)
    so = cfg.data.storage_options or None
    _, db_codes, db_labels = load_codes_with_labels(args.db_codes, args.db_frames, storage_options=so)
    _, q_codes, q_labels = load_codes_with_labels(args.query_codes, args.query_frames or args.db_frames,
                                                  num_classes=db_labels.shape[1], storage_options=so)
    result = evaluate(db_codes, q_codes, db_labels, q_labels, ks=cfg.eval.ks, protocol=cfg.eval.protocol,
                      pr=cfg.eval.pr_curve, precision_ns=cfg.eval.precision_ns)
    name = args.name
    print(markdown_table({name: result}))
    if args.out:
        write_report({name: result}, args.out, storage_options=cfg.run.storage_options or None, plots=cfg.eval.plots)
        print(f"wrote {args.out}/results.json, results.md and plots")
    return 0


def cmd_import_h5(args: argparse.Namespace) -> int:
    from vhindex.data import import_paper_dataset

    import_paper_dataset(args.layout, args.src, args.out, storage_options=_storage_options(args.storage_options))
    print(f"imported {args.layout} from {args.src} -> {args.out}/{{train,query,database}}")
    return 0


def cmd_export_h5(args: argparse.Namespace) -> int:
    from vhindex.data import export_h5_features

    export_h5_features(args.dataset, args.feats_out, labels_out_url=args.labels_out, mat_format=args.mat_format,
                       storage_options=_storage_options(args.storage_options))
    print(f"exported {args.dataset} -> {args.feats_out}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from vhindex.app.jobs import build_graph_from_config

    cfg = _config(args)
    log.info("resolved config:\n%s", cfg.to_yaml())
    manifest = build_graph_from_config(cfg)
    out = cfg.graph.out or f"{cfg.run.output_dir.rstrip('/')}/graph"
    print(f"anchor graph: k={manifest.k} anchors, a={manifest.a} per video, N={manifest.num_videos}, "
          f"d={manifest.d}, rule={manifest.rule}, inertia={manifest.inertia:.4g} -> {out}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            load_config(path)
            print(f"ok      {path}")
        except ConfigError as err:
            failed += 1
            print(f"INVALID {err}")
    return 1 if failed else 0


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from vhindex.benchdata.quality import run_quality_bench

    if args.methods:  # a subset of methods (their results are merged into the report's tables)
        args.overrides = [*args.overrides, f"bench.methods=[{args.methods}]"]
    cfg = _config(args)
    command = "vhindex bench quality " + " ".join(
        ([f"--config {args.config}"] if args.config else []) + list(args.overrides))
    from vhindex.app.engines import select_engine

    run_quality_bench(cfg, command=command.strip(), engines=select_engine)
    return 0


def cmd_bench_merge(args: argparse.Namespace) -> int:
    """``vhindex bench merge``: several runs' ``results.json`` -> one report (``bench.report``)."""
    from vhindex.benchdata.quality import merge_reports

    cfg = _config(args)
    combine = [r for r in (args.combine or "").split(",") if r]
    merge_reports(args.parts, cfg, command="vhindex bench merge " + " ".join(args.parts)
                  + (f" --combine {args.combine}" if combine else "")
                  + (" --new-rows-only" if args.new_rows_only else ""),
                  combine_rows=combine, new_rows_only=args.new_rows_only)
    print(f"merged {len(args.parts)} result files into {cfg.bench.report}")
    return 0


def cmd_bench_sources(args: argparse.Namespace) -> int:
    from vhindex.benchdata.sources import fetch_debian_sources

    try:
        root = fetch_debian_sources(args.dest, log=lambda m: print(m, flush=True))
    except RuntimeError as err:
        print(f"vhindex bench sources: error: {err}", file=sys.stderr)
        return 1
    print(root)
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vhindex`` console script."""
    parser = argparse.ArgumentParser(prog="vhindex", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthesize data, fit baselines, index, query, print mAP@K")
    _add_config_args(p, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a seeded synthetic frame-feature dataset (train/query/database)")
    p.add_argument("--out", help="output URL (default: <run.output_dir>/data)")
    _add_config_args(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("validate", help="check a frame-feature dataset; errors name the file and row")
    p.add_argument("url")
    p.add_argument("--frames", type=int, help="expected M")
    p.add_argument("--dim", type=int, help="expected D")
    p.add_argument("--no-values", action="store_true", help="skip the NaN/Inf scan")
    p.add_argument("--storage-options", help="fsspec options as JSON")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fit", help="fit a hashing model on data.train (in-process)")
    p.add_argument("--out", help="model URL (default: <run.output_dir>/model)")
    p.add_argument("--per-frame", action="store_true",
                   help="fit on single frames (M = 1): a frame model for `vhindex index frames`")
    _add_config_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("train", help="train a learned student (DKPH, BTH): teacher -> graph -> student -> codes -> "
                                     "mAP (Ray Train under `ray job submit`, else in-process)")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress lines")
    _add_config_args(p, default="configs/train/demo.yaml")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("extract", help="videos -> frame-feature dataset (sharded, resumable; Ray Data actors)")
    p.add_argument("--listing", help="folder of videos or a listing file (.txt/.csv/.jsonl/.parquet)")
    p.add_argument("--out", help="output dataset URL")
    p.add_argument("--backbone", help="efficientnet_lite0 (bundled weights), vgg16_fc7, resnet50_pool, uts_student "
                                      "(weights: extract.weights=...)")
    p.add_argument("--num-frames", type=int, help="M frames sampled per video")
    p.add_argument("--image-size", type=int, help="crop size in pixels")
    p.add_argument("--engine", choices=["auto", "ray", "local"], help="ray: actor pool on a (local) Ray")
    p.add_argument("--storage-options", help="fsspec options as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("encode", help="frame-feature dataset -> codes dataset (sharded, resumable; Ray Data actors)")
    p.add_argument("--model", help="saved model URL")
    p.add_argument("--frames", help="frame-feature dataset URL")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", help="exact output folder")
    g.add_argument("--out-root", help="codes root: writes <root>/<model>-<bits>b-<version>/ beside older versions")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--engine", choices=["auto", "ray", "local"], help="ray: actor pool on a (local) Ray")
    p.add_argument("--storage-options", help="fsspec options as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("index", help="build an index from a codes dataset: `index flat` (one file, for `vhindex "
                                     "query`) or `index sharded` (shards + manifest, for `vhindex serve`)")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="FORMAT")
    c = isub.add_parser("flat", help="codes dataset -> one flat binary index file (what `vhindex query` reads)")
    c.add_argument("--codes", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--storage-options", help="fsspec options as JSON")
    c.set_defaults(func=cmd_index_flat)
    c = isub.add_parser("compact", help="fold a served index's update log into a new base index (then hot-swap it)")
    c.add_argument("--index", required=True, help="the served sharded index")
    c.add_argument("--log", help="its update log (default: <index>/_updates, as serve.update_log)")
    c.add_argument("--out", required=True, help="URL of the new index")
    c.add_argument("--storage-options", help="fsspec options as JSON")
    c.set_defaults(func=cmd_index_compact)
    c = isub.add_parser("frames", help="frame features + a frame model (fitted on single frames) -> sharded "
                                       "frame-level index (UTS Algorithm 1; copy search with matching segments)")
    c.add_argument("--frames", required=True, help="frame-feature dataset URL")
    c.add_argument("--model", required=True, help="frame model URL (a model fitted with M = 1)")
    c.add_argument("--out", required=True, help="index folder URL")
    c.add_argument("--shards", type=int, default=1, help="contiguous shards (default: %(default)s)")
    c.add_argument("--overwrite", action="store_true", help="replace an index already at --out")
    c.add_argument("--storage-options", help="fsspec options as JSON")
    c.set_defaults(func=cmd_index_frames)
    for parent, name, helptext in ((isub, "sharded", "codes dataset -> sharded binary index (one folder per shard + "
                                                      "manifest; what `vhindex serve` serves)"),
                                   (sub, "build-index", "alias of `vhindex index sharded`")):
        c = parent.add_parser(name, help=helptext)
        c.add_argument("--codes", help="codes dataset URL")
        c.add_argument("--out", help="index folder URL")
        c.add_argument("--shards", type=int, help="number of balanced shards")
        c.add_argument("--type", choices=["flat", "hnsw", "ivf", "multihash", "gpu_flat"])
        c.add_argument("--storage-options", help="fsspec options as JSON")
        c.add_argument("--mask-ratio", type=float, dest="mask_ratio",
                       help="with --model of a classifying model (DVHCM): the category-mask ratio (default: the "
                            "model's mask_ratio)")
        if name == "build-index":
            c.add_argument("--level", choices=["video", "frame"], default="video",
                           help="frame: a frame-level index from --frames and --model (`vhindex index frames`)")
            c.add_argument("--frames", help="--level frame: frame-feature dataset URL")
            c.add_argument("--model", help="--level frame: frame model URL (fitted with M = 1); --level video: the "
                                           "model that made the codes -- a DVHCM model's category masks are attached "
                                           "to the index")
            c.add_argument("--overwrite", action="store_true", help="--level frame: replace an index at --out")
        else:
            c.add_argument("--model", help="the model that made the codes (a DVHCM model's category masks are "
                                           "attached to the index)")
        _add_config_args(c)
        c.set_defaults(func=cmd_index_sharded)

    p = sub.add_parser("deploy", help="cluster deployment files")
    dsub = p.add_subparsers(dest="deploy_command", required=True, metavar="ACTION")
    c = dsub.add_parser("render", help="write infra/ (KubeRay RayCluster / RayJob / RayService, Ray launcher YAML) "
                                       "from a deployment spec and the configs it names")
    c.add_argument("--config", default="configs/deploy/cluster.yaml", help="deployment spec (default: %(default)s)")
    c.add_argument("--target", choices=["kuberay", "launcher", "all"], default="all")
    c.add_argument("--out", default="infra", help="folder to write (default: %(default)s)")
    c.add_argument("--root", default=".", help="repository root the spec's config paths are relative to")
    c.add_argument("--check", action="store_true", help="write nothing; fail when the files differ from a rendering")
    c.set_defaults(func=cmd_deploy_render)

    p = sub.add_parser("serve", help="serve a sharded index over HTTP with Ray Serve on a local Ray")
    p.add_argument("--serve-config", default="configs/serve/local.yaml", help="Serve config YAML (default: %(default)s)")
    p.add_argument("--index", help="sharded index URL (overrides the config's args.index)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the app's args (replicas=2)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("query", help="search an index by hex code or by an indexed video id")
    p.add_argument("--index", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--code", help="query code as hex (bit order msb0, see README)")
    g.add_argument("--video-id", help="use this indexed video's code as the query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--storage-options", help="fsspec options as JSON")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("search", help="query a running service: a video file, a URL, a hex code or an indexed id")
    p.add_argument("--service", required=True, help="base URL of the service (http://127.0.0.1:8000)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--video", help="a video file to upload")
    g.add_argument("--url", help="a video URL the service may read (serve.video_url_prefixes)")
    g.add_argument("--code", help="query code as hex")
    g.add_argument("--video-id", help="an indexed video's id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--token-env", help="environment variable holding the bearer token")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt")
    p.add_argument("--retries", type=int, default=3, help="retries on 503 / connection failures")
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="mAP@K / P@N / PR curves of codes datasets against labels")
    p.add_argument("--db-codes", required=True)
    p.add_argument("--query-codes", required=True)
    p.add_argument("--db-frames", required=True, help="frame dataset holding the database labels")
    p.add_argument("--query-frames", help="frame dataset holding the query labels (default: --db-frames)")
    p.add_argument("--name", default="codes", help="row name in the table")
    p.add_argument("--out", help="folder for results.json, results.md and plots")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("import-h5", help="import the papers' HDF5/.mat feature files")
    p.add_argument("--layout", required=True, help="fcvid, activitynet, yfcc, ucf101 or hmdb51")
    p.add_argument("--src", required=True, help="folder holding the released files")
    p.add_argument("--out", required=True)
    p.add_argument("--storage-options", help="fsspec options as JSON")
    p.set_defaults(func=cmd_import_h5)

    p = sub.add_parser("export-h5", help="export a frame-feature dataset as HDF5 (+ .mat labels)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--feats-out", required=True)
    p.add_argument("--labels-out")
    p.add_argument("--mat-format", choices=["v5", "v7.3"], default="v5")
    p.add_argument("--storage-options", help="fsspec options as JSON")
    p.set_defaults(func=cmd_export_h5)

    p = sub.add_parser("graph", help="k-means anchors + nearest anchors (anchor graph) on Dask / Dask-on-Ray")
    _add_config_args(p, default="configs/graph/demo.yaml")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("bench", help="real-data benchmarks: fetch their sources, run the quality tables")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    c = bsub.add_parser("sources", help="download + unpack the Debian packages the benchmarks read (no root needed)")
    c.add_argument("--dest", default="bench-work/sources", help="folder (default: %(default)s; files under DEST/root)")
    c.set_defaults(func=cmd_bench_sources)
    c = bsub.add_parser("quality", help="every method x 16/32/64 bits on the fashion-clip and near-duplicate "
                                        "benchmarks -> markdown tables + plots")
    c.add_argument("--methods", help="comma-separated subset of bench.methods to run, e.g. conmh,gcmh")
    _add_config_args(c, default="configs/bench/quality.yaml")
    c.set_defaults(func=cmd_bench_quality)
    c = bsub.add_parser("merge", help="merge the results.json of several runs (e.g. one per method) into one report "
                                      "(at bench.report of --config)")
    c.add_argument("parts", nargs="+", metavar="RESULTS_JSON", help="result files, later ones win per row")
    c.add_argument("--combine", help="comma-separated rows (e.g. conmh) whose cells add a later file's seeds to "
                                     "the earlier ones instead of being replaced (runs split by seed)")
    c.add_argument("--new-rows-only", action="store_true",
                   help="a later file only adds the rows the earlier ones lack (their cells are kept)")
    c.add_argument("--config", default="configs/bench/quality.yaml", help="for bench.report and the settings lines")
    c.set_defaults(func=cmd_bench_merge, overrides=[])

    p = sub.add_parser("config", help="show or check configs")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("show", help="print the resolved config")
    _add_config_args(c)
    c.set_defaults(func=cmd_config_show)
    c = csub.add_parser("check", help="validate config files")
    c.add_argument("files", nargs="+")
    c.set_defaults(func=cmd_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vhindex`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"vhindex: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"vhindex {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
