"""Typed configuration: YAML files in ``configs/`` + dotted command-line overrides.

One root model, :class:`Config`, has a section per stage (``run``, ``data``, ``synth``, ``model``,
``eval``, ``index``, ``demo``, ``graph``, ``train``). Every section has defaults, and every section forbids unknown
keys, so a typo such as ``model.bitz=64`` is an error rather than silently ignored.

Loading::

    cfg = load_config("configs/demo.yaml", overrides=["model.bits=64", "eval.protocol=standard"])

Override values are parsed as YAML (``64`` is an int, ``[16, 32]`` a list, ``null`` is None).
Validation reports **every** problem at once, each naming its dotted key
(:class:`ConfigError`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ProtocolName = Literal["paper", "standard"]


class ConfigError(ValueError):
    """A configuration failed to load or validate; ``problems`` lists ``(dotted_key, message)``."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {key}: {msg}" for key, msg in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in config {source}:\n{lines}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


#: models trained on pixels rather than on frame features (``vhindex.train.uts``): a name ``model.name`` accepts
#: though the HashModel registry does not hold it (their codes come from a registered frame model, e.g. LSH)
PIXEL_MODELS = ("uts",)


def _check_model_name(name: str) -> str:
    from vhindex.models import available_models

    known = [*available_models(), *PIXEL_MODELS]
    if name not in known:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(known)}")
    return name


def _check_bits(value: int) -> int:
    if value % 8 or not 8 <= value <= 4096:
        raise ValueError(f"code length must be a multiple of 8 between 8 and 4096 bits, got {value}")
    return value


class RunSection(_Section):
    """Where a run writes and how it is seeded."""

    seed: int = Field(0, description="Seed for everything random in the run.")
    output_dir: str = Field("runs/default", description="fsspec URL of the run folder.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for output_dir, and the default of every section's "
                                          "storage_options (a section that sets its own overrides it).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DataSection(_Section):
    """Frame-feature datasets (fsspec URLs) used by fit / encode / eval."""

    train: str | None = None
    query: str | None = None
    database: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options of the datasets "
                                                                            "(default: run.storage_options).")
    batch_size: int = Field(1024, gt=0, description="Videos per streamed batch.")


class SynthSection(_Section):
    """Synthetic dataset generation (``vhindex synth``); see :mod:`vhindex.data.synth`."""

    preset: str = "demo"
    overrides: dict[str, Any] = Field(default_factory=dict, description="SynthSpec fields replacing the preset's.")
    rows_per_file: int = Field(50_000, gt=0)
    row_group_size: int = Field(1_000, gt=0)
    chunk_size: int = Field(2_000, gt=0)


class ModelSection(_Section):
    """Which hashing model to fit and its parameters."""

    name: str = "itq"
    bits: int = 64
    params: dict[str, Any] = Field(default_factory=dict, description="Model-specific keyword arguments.")

    @field_validator("bits")
    @classmethod
    def _bits_ok(cls, v: int) -> int:
        return _check_bits(v)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return _check_model_name(v)

    @model_validator(mode="after")
    def _params_ok(self) -> ModelSection:
        # Building the model checks its parameters (names and values) without fitting anything.
        from vhindex.models import build_model

        try:
            if self.name in PIXEL_MODELS:
                from vhindex.models.uts import check_uts_params

                check_uts_params(self.params)
            else:
                build_model(self.name, self.bits, **self.params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"model.params: {err}") from None
        return self


class EvalSection(_Section):
    """Retrieval evaluation (``vhindex eval``)."""

    ks: list[int] = Field(default_factory=lambda: [5, 10, 20, 40, 60, 80, 100])
    protocol: ProtocolName = "paper"
    precision_ns: list[int] = Field(default_factory=lambda: [10, 50, 100])
    pr_curve: bool = True
    plots: bool = True

    @field_validator("ks", "precision_ns")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must list at least one value")
        bad = [k for k in v if k <= 0]
        if bad:
            raise ValueError(f"values must be positive, got {bad}")
        return sorted(set(v))


class IndexSection(_Section):
    """Binary index options (``jobs/build_index.py``, ``vhindex build-index``, the demo)."""

    type: Literal["flat", "hnsw", "ivf", "multihash", "gpu_flat"] = Field(
        "flat", description="Per-shard faiss index: exact flat (default), HNSW / IVF / multi-hash (approximate), "
                            "gpu_flat (exact, faiss-gpu + a GPU).")
    params: dict[str, Any] = Field(default_factory=dict, description="Index-type parameters (hnsw: M, ef_search; "
                                                                     "ivf: nlist, nprobe; multihash: nhash, b).")
    threads: int | None = Field(None, gt=0, description="faiss OpenMP threads; None keeps faiss's default.")
    top_k: int = Field(10, gt=0, le=10_000, description="Neighbours returned per query.")
    codes: str | None = Field(None, description="Codes dataset to index (fsspec URL).")
    out: str | None = Field(None, description="Sharded index folder to write (fsspec URL).")
    num_shards: int = Field(1, gt=0, description="Balanced shards (one Serve deployment each).")
    model: str | None = Field(None, description="The model that made the codes (URL); a DVHCM model's category-mask "
                                                "table is attached to the index (<out>/masks.npy), which the service "
                                                "then uses for `category` queries.")
    mask_ratio: float | None = Field(None, gt=0, le=1, description="Category-mask ratio for the attached table "
                                                                   "(None: the model's mask_ratio).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for codes and out "
                                                                            "(default: run.storage_options).")


class DemoSection(_Section):
    """What ``vhindex demo`` runs.

    ``learned`` adds learned hashers trained on the demo's synthetic data beside the baselines: ``gcmh``
    / ``conmh`` in one stage (:mod:`vhindex.train.contrastive`), ``dkph`` / ``bth`` by the teacher
    recipe (teacher -> embeddings -> in-process anchor graph -> student). Their parameters come from
    ``learned_params`` (per model), their schedule from the ``train`` section with ``learned_train``
    (per model) over it.
    """

    methods: list[str] = Field(default_factory=lambda: ["lsh", "pca_sign", "itq"])
    bits: list[int] = Field(default_factory=lambda: [16, 32, 64])
    learned: list[Literal["gcmh", "conmh", "dkph", "bth"]] = Field(
        default_factory=list, description="Learned models trained beside the baselines (empty: none).")
    learned_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Model parameters per learned model (num_frames / feature_dim come from "
                                          "the data).")
    learned_train: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="`train` fields per learned model, over the train section.")
    learned_bits: list[int] | None = Field(
        None, description="Code lengths (of demo.bits) the learned students train at; null = every demo.bits.")
    example_queries: int = Field(3, ge=0)
    show_top: int = Field(5, gt=0)
    serve: bool = Field(True, description="End by serving the best index with Ray Serve (local Ray, 127.0.0.1) "
                                          "and querying it over HTTP (skipped, with a note, without vhindex[ray]).")
    serve_shards: int = Field(2, gt=0, description="Shards of the served demo index.")
    video: bool = Field(True, description="While serving, also index a handful of real clips (the videos that ship "
                                          "in PyPI packages) and edited copies made on the fly, and query the service "
                                          "with an uploaded copy (skipped, with a note, without vhindex[video]).")
    video_frames: int = Field(8, gt=0, description="Frames sampled per clip in the real-video part.")
    video_image_size: int = Field(160, gt=0, description="Crop size of the real-video part.")
    video_bits: int = Field(64, gt=0, description="Code length of the real-video part (LSH: a handful of clips is too "
                                                  "few to learn a code from).")

    @field_validator("bits")
    @classmethod
    def _bits_ok(cls, v: list[int]) -> list[int]:
        for b in v:
            _check_bits(b)
        return v

    @field_validator("learned")
    @classmethod
    def _learned_unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("learned_bits")
    @classmethod
    def _learned_bits_ok(cls, v: list[int] | None) -> list[int] | None:
        for b in v or ():
            _check_bits(b)
        return v

    def learned_lengths(self) -> list[int]:
        """Code lengths the learned students train at: the ``bits`` also in ``learned_bits`` (null: all)."""
        if not self.learned:
            return []
        return [b for b in self.bits if self.learned_bits is None or b in self.learned_bits]

    @field_validator("methods")
    @classmethod
    def _methods_ok(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_model_name(name)
        return v


class KMeansSection(_Section):
    """K-means parameters of the anchor graph (passed to :func:`vhindex.graph.kmeans.fit_kmeans`)."""

    n_iter: int = Field(20, gt=0, description="Lloyd iterations / mini-batch epochs (at most).")
    init: Literal["k-means++", "k-means||", "random"] = Field("k-means++", description="Centroid initialisation.")
    mode: Literal["full", "minibatch"] = Field("full", description="Lloyd passes over all rows, or mini-batches.")
    init_sample: int | None = Field(None, gt=0, description="Rows of the k-means++ sample; None = fit_kmeans default.")
    tol: float = Field(1e-4, ge=0.0, description="Stop when the relative inertia change is below tol (0 = never).")
    batch_chunks: int | None = Field(None, gt=0, description="Chunks per mini-batch step; None = about a tenth.")


class GraphSynthSection(_Section):
    """Seeded synthetic clustered embeddings, written when ``graph.embeddings`` is null (demos, tests)."""

    num_videos: int = Field(2_000, gt=0)
    dim: int = Field(32, gt=0)
    num_clusters: int = Field(20, gt=0)
    noise: float = Field(0.3, ge=0.0, description="Per-dimension noise around the cluster centres.")


class GraphSection(_Section):
    """The anchor graph: k-means anchors + each video's nearest anchors (``vhindex graph``,
    ``jobs/build_graph.py``, and the graph stage of training -- which reads its settings from here only).

    ``executor`` picks where the k-means and nearest-anchor passes run: ``sequential`` in this process
    (small data, tests), ``dask`` on the Dask cluster that ``address`` names: ``null`` starts a local
    Dask cluster (``n_workers`` x ``threads_per_worker``), ``"ray"`` runs Dask-on-Ray on the current /
    auto-detected Ray cluster, ``"tcp://host:8786"`` connects to an existing Dask scheduler. Both give
    bit-identical graphs (chunk-order reduction).
    """

    embeddings: str | None = Field(None, description="fsspec URL of the embeddings dataset (teacher output); "
                                                     "training sets it to its teacher's embeddings.")
    out: str | None = Field(None, description="fsspec URL of the graph folder; null = <run.output_dir>/graph.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for both URLs "
                                                                            "(default: run.storage_options).")
    anchors: int = Field(2000, gt=0, description="Number of anchors (k-means centroids; the papers' k, released: 2000).")
    nearest_anchors: int = Field(5, gt=0, description="Nearest anchors kept per video (the papers' s / a).")
    rule: Literal["bth", "nph", "gaussian"] = Field("bth", description="Anchor-graph rule (vhindex.graph.anchor_graph).")
    rule_params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the rule.")
    kmeans: KMeansSection = Field(default_factory=KMeansSection)
    executor: Literal["dask", "sequential"] = Field(
        "dask", description="dask: on the Dask cluster of `address`; sequential: in this process (small data, tests).")
    address: str | None = Field(None, description='executor dask: null (local Dask cluster), "ray" (Dask-on-Ray) or '
                                                  "a Dask scheduler address.")
    n_workers: int = Field(2, gt=0, description="Workers of the local Dask cluster (address null).")
    threads_per_worker: int = Field(1, gt=0, description="Threads per local Dask worker (and per task).")
    rows_per_chunk: int = Field(50_000, gt=0, description="Upper bound on rows per map task (row groups never split).")
    synth: GraphSynthSection | None = Field(None, description="Synthesize embeddings when `embeddings` is null.")

    @field_validator("address")
    @classmethod
    def _address_ok(cls, v: str | None) -> str | None:
        if v is None or v == "ray" or "://" in v or ":" in v:
            return v
        raise ValueError(f'must be null, "ray" or a Dask scheduler address such as tcp://host:8786, got {v!r}')

    @model_validator(mode="after")
    def _nearest_fits(self) -> GraphSection:
        a = self.nearest_anchors
        if a > self.anchors:
            raise ValueError(f"graph.nearest_anchors: must be at most graph.anchors={self.anchors}, got {a}")
        need = 5 if self.rule == "bth" else self.rule_params.get("a", 3)
        if isinstance(need, int) and a < need:
            raise ValueError(f"graph.nearest_anchors: rule {self.rule!r} needs {need} nearest anchors per video, got {a}")
        return self


class TrainSection(_Section):
    """How learned hashers train (``vhindex train``, ``jobs/train_dkph.py``, :mod:`vhindex.train`):
    teacher -> embeddings -> graph -> student -> codes -> mAP.

    The student is ``model.name`` (``dkph`` or ``bth``) at ``model.bits``; its architecture is
    ``model.params`` (``num_frames``, ``feature_dim``, ``hidden``, ``layers``, ``heads``, ``ffn``,
    ``dropout`` and the DKPH switches), shared by the teacher. The graph stage reads the ``graph``
    section. The frame datasets come from the ``data`` section (all null = synthesize ``synth`` data
    into ``<run.output_dir>/data``). The schedule defaults are the released ones (Adam 3e-4,
    ``lr = max(3e-4 * 0.9 ** (epoch // 20), 1e-4)``, batch 256). The released DKPH sets
    ``num_epochs=48`` but its loop breaks only after epoch 48, so it trains **49** epochs -- the default here.
    """

    gamma1: float = Field(0.11, ge=0.0, description="DKPH: weight of L_bsim.")
    gamma2: float = Field(0.9, ge=0.0, description="DKPH: weight of L_tsim.")
    teacher_bits: int | None = Field(None, description="Teacher per-frame code length; null = model.bits.")
    teacher_epochs: int = Field(
        49, ge=0, description="Teacher (reconstruction-only BTH) epochs; the BTH author used 250-300 on ActivityNet.")
    epochs: int = Field(49, ge=0, description="Student epochs (released DKPH: num_epochs=48, i.e. 49 run).")
    batch_size: int = Field(256, gt=0)
    lr: float = Field(3e-4, gt=0.0)
    lr_decay: float = Field(0.9, gt=0.0)
    lr_decay_every: int = Field(20, gt=0)
    lr_min: float = Field(1e-4, ge=0.0)
    mask_prob: float = Field(0.15, ge=0.0, le=1.0, description="BERT-style frame masking probability.")
    pair_backend: Literal["auto", "numba", "numpy"] = Field("auto", description="PairSampler backend.")
    shuffle_buffer: int = Field(8192, ge=0, description="Videos mixed per shuffle (row-group order is shuffled too).")
    partner_cache_bytes: int = Field(
        2 << 30, ge=0,
        description="Hold the training features in memory for partner lookups when they fit in this many bytes; "
                    "else read the row groups holding the partners.")
    ckpt_every: int = Field(1, gt=0)
    eval_every: int = Field(0, ge=0, description="Student epochs between mAP evaluations (0: only at the end).")
    device: str = Field("auto", description='"auto" (CUDA when available), "cpu", "cuda", "cuda:0", ...')
    backend: Literal["auto", "ray", "local"] = Field(
        "auto", description='Where training runs: "ray" (Ray Train, cluster.train), "local" (in-process), "auto" '
                            "(Ray when RAY_ADDRESS is set, e.g. under `ray job submit`, or num_workers > 1; "
                            "else in-process).")
    num_workers: int = Field(1, gt=0, description="Ray Train workers (cluster runs).")
    max_failures: int = Field(
        0, ge=-1, description="Ray Train: restarts of a training stage's worker group after a failure (a lost "
                              "node, a killed worker) within one job, each resuming from the last checkpoint in "
                              "run.output_dir; -1 = unlimited. 0: the job fails and names the failure (resubmit "
                              "it to resume).")
    use_gpu: bool = Field(False, description="Ray Train workers use one GPU each.")

    @field_validator("teacher_bits")
    @classmethod
    def _teacher_bits_ok(cls, v: int | None) -> int | None:
        return None if v is None else _check_bits(v)


class PipelineSection(_Section):
    """How a sharded Ray Data job (extraction, encoding) runs: engine, actor pool, failure policy."""

    engine: Literal["auto", "ray", "local"] = Field(
        "auto", description='"ray": Ray Data actor pool (cluster.data); "local": in-process, one shard at a '
                            'time; "auto": Ray when it is installed.')
    address: str | None = Field(
        None, description="Ray address; null = the job's cluster ($RAY_ADDRESS, e.g. under `ray job submit`) "
                          "or else a local Ray on 127.0.0.1.")
    actors: int = Field(1, gt=0, description="Largest actor pool (each actor loads the model once).")
    min_actors: int = Field(1, gt=0, description="Smallest actor pool (autoscaling between min and max).")
    cpus_per_actor: float = Field(
        1.0, gt=0.0, description="CPUs reserved per actor. Leave CPUs for Ray Data's own tasks: on 2 CPUs a pool "
                                 "that reserves every CPU hangs.")
    gpus_per_actor: float | Literal["auto"] = Field(
        "auto", description='GPUs per actor; "auto" = 1 when the cluster has GPUs, else 0.')
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every actor requests (e.g. {\"extract_node\": 0.01} "
                                          "keeps the actors on the nodes started with that resource). Actors are "
                                          "spread over the nodes that qualify (Ray's SPREAD strategy).")
    max_error_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="Per-video errors (undecodable files, ...) above this fraction of the "
                                          "inputs make the job exit non-zero (the outputs are still written).")
    progress_every_s: float = Field(10.0, gt=0.0, description="Seconds between driver progress lines.")

    @model_validator(mode="after")
    def _pool_ok(self) -> PipelineSection:
        if self.min_actors > self.actors:
            raise ValueError(f"min_actors={self.min_actors} must be <= actors={self.actors}")
        return self


class ExtractSection(_Section):
    """Frame-feature extraction from videos (``vhindex extract``, ``jobs/extract_features.py``)."""

    listing: str | None = Field(
        None, description="fsspec URL of the videos: a listing file (.txt: one URI per line; .csv / .jsonl / "
                          ".parquet with columns uri[, video_id][, labels]) or a folder (searched recursively "
                          "for `extensions`).")
    out: str | None = Field(None, description="fsspec URL of the frame-feature dataset to write.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (videos and output; "
                                                                            "default: run.storage_options).")
    extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv"],
        description="File extensions taken when `listing` is a folder.")
    backbone: str = Field("efficientnet_lite0", description="vhindex.features backbone name.")
    weights: str | None = Field(None, description="Weights file of the backbone (null: the bundled weights).")
    num_frames: int = Field(25, gt=0, description="M, frames sampled uniformly per video.")
    image_size: int | None = Field(None, gt=0, description="Crop size in pixels; null = the backbone's default.")
    dtype: Literal["float16", "float32"] = "float16"
    batch_frames: int = Field(256, gt=0, description="Frames per CNN forward pass.")
    decode_workers: int = Field(2, gt=0, description="Decoding threads per actor (overlap with inference).")
    threads: int | None = Field(None, gt=0, description="torch threads per actor; null = torch's default.")
    device: str = Field("auto", description='"auto" (CUDA when present), "cpu", "cuda", ...')
    min_frames: int = Field(1, gt=0, description="Videos with fewer decodable frames become error rows.")
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="CNN runtime: auto = ONNX Runtime on CPU (2-3x faster than torch there; the graph is "
                            "exported once from the weights and cached), torch on CUDA.")
    videos_per_shard: int = Field(256, gt=0, description="Videos per output shard (the unit of resume).")
    pipeline: PipelineSection = Field(default_factory=PipelineSection)


class EncodeSection(_Section):
    """Encoding a frame-feature dataset to codes (``vhindex encode``, ``jobs/encode.py``)."""

    frames: str | None = Field(None, description="fsspec URL of the frame-feature dataset.")
    model: str | None = Field(None, description="fsspec URL of a saved vhindex model (`vhindex fit`, training jobs).")
    out_root: str | None = Field(
        None, description="Codes root: the codes go to <out_root>/<model>-<bits>b-<version>/, beside (never over) "
                          "the codes of other model versions.")
    out: str | None = Field(None, description="Exact output folder (instead of out_root's versioned name).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (input, model, output; "
                                                                            "default: run.storage_options).")
    batch_size: int = Field(1024, gt=0, description="Videos per model call.")
    rows_per_shard: int = Field(50_000, gt=0, description="Upper bound on videos per shard (row groups never split).")
    threads: int | None = Field(None, gt=0, description="torch threads per actor; null = the actor's CPU count.")
    device: str = Field("auto", description='Learned models: "auto" (CUDA when present), "cpu", "cuda", ...')
    pipeline: PipelineSection = Field(default_factory=PipelineSection)

    @model_validator(mode="after")
    def _one_output(self) -> EncodeSection:
        if self.out is not None and self.out_root is not None:
            raise ValueError("set either encode.out or encode.out_root, not both")
        return self

class ServeSection(_Section):
    """The Ray Serve query service (``cluster.serve``, ``vhindex serve``, ``configs/serve/*.yaml``)."""

    index: str | None = Field(None, description="fsspec URL of a sharded index (jobs/build_index.py).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for index/model URLs.")
    model: str | None = Field(None, description="Saved model URL; enables /search by frame features (encoder "
                                                "deployment). Must be the model that made the indexed codes.")
    mask_table: str | None = Field(None, description="Category-mask table (.npy) enabling `category` in queries.")
    host: str = Field("127.0.0.1", description="HTTP bind address (127.0.0.1 unless you mean to expose it).")
    port: int = Field(8000, ge=0, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        "EveryNode", description="Where Serve runs HTTP proxies (a Serve config's top-level proxy_location): every "
                                 "node (a load balancer in front spreads over them), the head only, or none.")
    app_name: str = "vhindex"
    route_prefix: str = "/"
    replicas: int = Field(1, gt=0, description="Replicas per shard deployment.")
    router_replicas: int = Field(1, gt=0)
    shard_cpus: float = Field(0.5, gt=0.0, description="CPUs reserved per shard replica.")
    router_cpus: float = Field(0.5, gt=0.0)
    max_replicas_per_node: int | None = Field(
        None, gt=0, description="Most replicas of one shard deployment on one Ray node. 1 is hard anti-affinity: the "
                                "replicas of a shard always sit on different nodes, so losing a node never takes "
                                "every copy of a shard (replicas beyond the node count stay pending until nodes "
                                "join). null: Serve's default, which spreads replicas over nodes best-effort.")
    shard_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every shard replica requests (e.g. {\"index_host\": "
                                          "0.01} keeps shards on the nodes started with that resource).")
    router_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every router replica requests (e.g. keep the routers "
                                          "on the ingress nodes).")
    faiss_threads: int = Field(1, gt=0, description="faiss OpenMP threads per shard replica.")
    max_k: int = Field(1000, gt=0, le=100_000, description="Largest k a request may ask.")
    max_batch: int = Field(1000, gt=0, description="Most queries in one /search/batch request.")
    max_body_bytes: int = Field(8_000_000, gt=0, description="Larger request bodies get 413.")
    shard_timeout_s: float = Field(2.0, gt=0.0, description="Per-shard deadline of one fan-out.")
    retries: int = Field(1, ge=0, description="Retries of a shard call that failed (dead replica, timeout).")
    batching: Literal["adaptive", "serve_batch"] = Field(
        "adaptive", description="How concurrent single queries share shard fan-outs. adaptive: no timer -- a query "
                                "goes out at once while fewer than batch_max_inflight fan-outs run, else it joins "
                                "the next one (batches grow with load, an idle service adds no wait). "
                                "serve_batch: Ray Serve's @serve.batch (waits up to batch_wait_s to fill a batch).")
    batch_max_size: int = Field(64, gt=0, description="Most single queries merged into one fan-out.")
    batch_max_inflight: int = Field(2, gt=0, description="adaptive: fan-outs of single queries in flight at once.")
    batch_wait_s: float = Field(0.001, ge=0.0, description="serve_batch: @serve.batch wait for more queries.")
    data_plane: bool = Field(
        True, description="router -> shard searches over direct TCP connections to the shard replicas (Serve stays "
                          "the control plane; any failure falls back to the Serve handle). false: Serve handles only.")
    data_plane_ports: tuple[int, int] | None = Field(
        None, description="data_plane: [first, last] ports shard replicas listen on for the router (a multi-node "
                          "cluster must open them between nodes); null: any free port (the OS's ephemeral range). "
                          "A local Ray listens on 127.0.0.1 only.")
    access_log: bool = Field(False, description="Serve access-log lines for every request and shard call.")
    fast_path: bool = Field(
        True, description="Run Ray Serve throughput-optimized (RAY_SERVE_THROUGHPUT_OPTIMIZED=1): router replicas "
                          "answer HTTP on their own ports (direct ingress, no proxy hop), deployments talk gRPC, user "
                          "code runs on the replica's event loop. Set in the Ray cluster's environment: applied when "
                          "vhindex starts Ray; a running cluster must have been started with it (see serve_cluster_env).")
    direct_port: int = Field(8100, ge=1024, le=65000,
                             description="fast_path: router replicas listen on the first free ports from here "
                                         "(one per replica, up to direct_port + 100); the proxy keeps `port`.")
    direct_drain_s: float = Field(5.0, gt=0.0,
                                  description="fast_path: a router replica being replaced keeps answering on its port "
                                              "this long (time for a load balancer in front to deregister it; Serve's "
                                              "own default is 30 s). Also how long a redeploy or shutdown waits.")
    auth_token_env: str | None = Field(
        None, description="Name of an environment variable holding a bearer token; when set, every request "
                          "must send `Authorization: Bearer <token>` (the token itself never goes in config).")
    updates: bool = Field(False, description="Online adds and deletes: POST /videos, POST /videos/delete, DELETE "
                                             "/videos/{id}, acknowledged once durable in the update log.")
    update_log: str | None = Field(None, description="URL of the update log (default: <index>/_updates).")
    update_poll_s: float = Field(0.25, gt=0.0, description="How often shard replicas read new batches of the log "
                                                           "(updates from another router are visible within it).")
    compact_after: int | None = Field(None, gt=0, description="Automatic compaction: once this many updates are in "
                                                              "the log and not in the served base, fold them into a "
                                                              "new base and hot-swap it in (None: only `vhindex index "
                                                              "compact`).")
    compact_check_s: float = Field(10.0, gt=0.0, description="How often the compactor counts the unfolded updates.")
    compact_dir: str | None = Field(None, description="Where automatic compaction writes new bases (default: "
                                                      "<first index>.compacted/).")
    frame_index: str | None = Field(None, description="URL of a sharded frame-level index (`vhindex index frames`): "
                                                      "enables `level: frame` queries (UTS Algorithm 1 + matched "
                                                      "segments), one deployment per frame shard.")
    frame_model: str | None = Field(None, description="The frame model that made the frame index's codes (`vhindex "
                                                      "fit --per-frame`): lets /search/video answer at level frame.")
    frame_top_n: int = Field(1000, gt=0, le=100_000, description="Gallery frames per query frame (Algorithm 1's N) "
                                                                 "when a request does not say.")
    max_json_depth: int = Field(16, gt=1, le=1000, description="JSON bodies nested deeper get 400 (checked before "
                                                                 "parsing; queries need 5 levels).")
    video_queries: bool = Field(False, description="Enable POST /search/video: an encoder deployment decodes uploaded "
                                                   "videos (PyAV), runs the backbone (video_backbone) and serve.model. "
                                                   "The model must have been trained on that backbone's features.")
    video_backbone: str = Field("efficientnet_lite0", description="Backbone of video queries: the one whose features "
                                                                   "the model was trained on (vhindex extract's).")
    video_weights: str | None = Field(None, description="Backbone weights (null: bundled), as in extract.weights.")
    video_image_size: int | None = Field(None, gt=0, description="Crop size, as in extract.image_size.")
    video_dtype: Literal["float16", "float32"] = Field("float16", description="Feature dtype, as in extract.dtype "
                                                                              "(the codes then equal the batch path's).")
    video_runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="CNN runtime: auto = ONNX Runtime on CPU (when installed), torch on CUDA.")
    video_replicas: int = Field(1, gt=0, description="Replicas of the video encoder deployment.")
    video_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per video encoder replica.")
    video_gpus: float = Field(0.0, ge=0.0, description="GPUs per video encoder replica (> 0: the replica runs the "
                                                       "CNN with torch on CUDA under float16 autocast).")
    video_threads: int = Field(2, gt=0, description="CNN threads per video encoder replica.")
    max_video_bytes: int = Field(64_000_000, gt=0, description="Larger uploads get 413.")
    max_video_seconds: float = Field(600.0, gt=0.0, description="Longer videos (container duration) get 422.")
    video_timeout_s: float = Field(30.0, gt=0.0, description="A video query that takes longer to decode and encode "
                                                             "gets 422.")
    video_url_prefixes: list[str] = Field(
        default_factory=list, description="URL prefixes POST /search/video may read from (e.g. s3://bucket/videos/ -- "
                                          "end each with '/'); empty: no URL is read, only uploads are accepted.")

    @field_validator("data_plane_ports")
    @classmethod
    def _port_range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (1024 <= v[0] <= v[1] <= 65535):
            raise ValueError(f"must be [first, last] with 1024 <= first <= last <= 65535, got {list(v)}")
        return v


class BenchSection(_Section):
    """Real-data quality benchmarks (``vhindex bench quality``, ``jobs/bench_quality.py``).

    Two benchmarks, both rendered / edited into real video files and featurised by the extraction
    pipeline: labelled clips from Fashion-MNIST photos (:mod:`vhindex.benchdata.fashion`) and
    near-duplicates of real source videos (:mod:`vhindex.benchdata.neardup`). Models are trained
    with the ``train`` section's settings (M, D, bits and anchors are set per benchmark).
    """

    work: str = Field("bench-work/quality", description="Folder of the videos, features, models and results "
                                                        "(re-runs reuse finished steps).")
    sources: list[str] = Field(
        default_factory=lambda: ["bench-work/sources/root"],
        description="Roots holding the Debian packages' files (`vhindex bench sources` unpacks them there); "
                    "$VHINDEX_BENCH_SOURCES and / are searched after them.")
    benchmarks: list[Literal["fashion", "neardup"]] = Field(default_factory=lambda: ["fashion", "neardup"])
    fashion_preset: Literal["full", "tiny"] = "full"
    fashion_overrides: dict[str, Any] = Field(default_factory=dict, description="FashionClipSpec fields to change.")
    neardup_preset: Literal["full", "tiny"] = "full"
    neardup_overrides: dict[str, Any] = Field(default_factory=dict, description="NearDupSpec fields to change.")
    render_workers: int = Field(2, gt=0, description="Processes rendering clips / variants.")
    fashion_extract: ExtractSection = Field(
        default_factory=lambda: ExtractSection(num_frames=10, image_size=112, pipeline=PipelineSection(engine="local")),
        description="Extraction of the fashion clips (listing/out are set by the runner).")
    neardup_extract: ExtractSection = Field(
        default_factory=lambda: ExtractSection(num_frames=25, image_size=128, pipeline=PipelineSection(engine="local")),
        description="Extraction of the near-duplicate videos (listing/out are set by the runner).")
    fashion_train: dict[str, Any] = Field(default_factory=dict, description="`train` fields changed for the fashion "
                                                                          "benchmark (e.g. epochs); the students' "
                                                                          "architecture is `model.params`.")
    neardup_train: dict[str, Any] = Field(
        default_factory=dict, description="`train` fields changed for the near-duplicate benchmark: its few hundred "
                                          "videos need more epochs / smaller batches for the same number of steps.")
    methods: list[str] = Field(default_factory=lambda: ["lsh", "itq", "bth", "dkph"],
                               description="Video-level methods (lsh, pca_sign, itq, bth, dkph, conmh, gcmh).")
    validation_queries: int = Field(
        250, ge=0, description="Fashion: learned models choose their epoch on a validation split carved from the "
                               "labelled training clips -- this many queries ... (0: no validation split; the "
                               "learned models then train on every training clip for their configured epochs).")
    validation_database: int = Field(750, ge=0, description="... and this many validation database clips.")
    method_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Model parameters per learned method (e.g. {gcmh: {depth: 2}}); the "
                                          "benchmark trains several models, so they are set here, not in model.params.")
    method_train: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="`train` fields per learned method (e.g. {conmh: {lr: 1.0e-4}}), over the "
                                          "train section and the benchmark's fashion_train / neardup_train.")
    neardup_method_train: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="`train` fields per learned method for the near-duplicate benchmark only, "
                                          "over method_train (its few hundred videos give a few steps per epoch, and "
                                          "it has no validation split to stop on).")
    frame_methods: list[str] = Field(default_factory=lambda: ["lsh", "itq"],
                                     description="Frame-level hashers of the UTS retrieval pipeline.")
    uts_student: bool = Field(False, description="Near-duplicates: train UTS's teacher-student network on the "
                                                 "benchmark's canonical source videos (model.name: uts) and add "
                                                 "frame-level LSH rows of its student and of its teacher.")
    uts_config: str = Field("configs/train/uts_neardup.yaml", description="The UTS training config the benchmark "
                                                                           "starts from (listing, output, seed, "
                                                                           "image size are the benchmark's).")
    uts_overrides: list[str] = Field(default_factory=list, description="`key=value` overrides of uts_config.")
    uts_bits: list[int] = Field(default_factory=lambda: [64, 256, 512],
                                description="Code lengths of the UTS frame-level rows (the paper: 512).")
    uts_video_methods: list[str] = Field(
        default_factory=list, description="Video-level methods (e.g. [itq, gcmh]) also trained on the UTS student's "
                                          "features of the near-duplicates, at `bits`: the learned pixel features "
                                          "under a video-level code (rows '<method>: UTS student features').")
    bits: list[int] = Field(default_factory=lambda: [16, 32, 64])
    seeds: list[int] = Field(default_factory=lambda: [0])
    ks: list[int] = Field(default_factory=lambda: [5, 20, 40, 60, 80, 100], description="mAP@K cut-offs (fashion).")
    uts_top_n: int = Field(1000, gt=0, description="UTS Algorithm 1: top-N similar gallery frames per query frame.")
    anchors_per_video: float = Field(
        0.125, gt=0.0, le=1.0, description="Graph anchors are min(graph.anchors, this x training videos), at least 2 x "
                                          "graph.nearest_anchors: the near-duplicate set has only a few hundred videos.")
    report: str = Field("benchmarks/results/real_quality.md", description="Markdown report (plots beside it).")
    plots: bool = True

    @field_validator("bits")
    @classmethod
    def _bits_ok(cls, v: list[int]) -> list[int]:
        return [_check_bits(b) for b in v]


#: sections whose ``storage_options`` default to ``run.storage_options``
STORAGE_OPTION_SECTIONS = ("data", "graph", "index", "extract", "encode", "serve")

#: keys that moved: a config still using one fails with an error naming the replacement
RENAMED_KEYS: dict[str, str] = {
    "train.model": "model.name",
    "train.bits": "model.bits",
    **{f"train.{k}": f"model.params.{k}" for k in (
        "num_frames", "feature_dim", "hidden", "layers", "heads", "ffn", "dropout", "temporal", "use_tsim",
        "use_bsim", "hash_input")},
    "train.anchors": "graph.anchors",
    "train.graph_rule": "graph.rule",
    "train.graph_executor": "graph.executor",
    "train.dask_address": "graph.address",
    "graph.k": "graph.anchors",
    "graph.a": "graph.nearest_anchors",
    "index.k": "index.top_k",
}


def _renamed_key_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for old, new in RENAMED_KEYS.items():
        section, _, key = old.partition(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            problems.append((old, f"this key moved: use {new} instead"))
    return problems


class Config(_Section):
    """The root configuration; every YAML file in ``configs/`` validates against it."""

    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    synth: SynthSection = Field(default_factory=SynthSection)
    model: ModelSection = Field(default_factory=ModelSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    index: IndexSection = Field(default_factory=IndexSection)
    demo: DemoSection = Field(default_factory=DemoSection)
    graph: GraphSection = Field(default_factory=GraphSection)
    train: TrainSection = Field(default_factory=TrainSection)
    extract: ExtractSection = Field(default_factory=ExtractSection)
    encode: EncodeSection = Field(default_factory=EncodeSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    bench: BenchSection = Field(default_factory=BenchSection)

    @model_validator(mode="before")
    @classmethod
    def _inherit_storage_options(cls, data: Any) -> Any:
        """``run.storage_options`` is the default of every section's ``storage_options`` (given once)."""
        if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
            return data
        so = data["run"].get("storage_options")
        if not so:
            return data
        data = dict(data)
        for name in STORAGE_OPTION_SECTIONS:
            section = data.get(name)
            if section is None:
                data[name] = {"storage_options": so}
            elif isinstance(section, dict) and not section.get("storage_options"):
                data[name] = {**section, "storage_options": so}
        return data

    def to_yaml(self) -> str:
        """The resolved configuration as YAML (logged by jobs and saved in run folders)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse ``a.b.c=value`` strings into ``(["a", "b", "c"], value)``; values are YAML scalars/lists."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError("command line", [(item, "override must look like key.sub=value")])
        key, _, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError("command line", [(item, "empty key in override")])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError("command line", [(key, f"cannot parse value {raw!r}: {err}")]) from err
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (creating nested dicts as needed)."""
    data = copy.deepcopy(data)
    for path, value in parse_overrides(overrides):
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError("command line", [(".".join(path), f"{part!r} is not a section")])
            node = child
        node[path[-1]] = value
    return data


def _format_validation_error(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `vhindex config show` for the known keys)"
        elif "input" in e and e["type"] not in ("missing",) and "got " not in msg:
            msg = f"{msg} (got {e['input']!r})"
        msg = msg.removeprefix("Value error, ")
        # Section-level validators name their own key ("model.params: ...").
        if msg.startswith(f"{key}.") and ": " in msg:
            key, _, msg = msg.partition(": ")
        problems.append((key, msg))
    return problems


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain dict into a :class:`Config`, reporting every problem at once."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("<root>", f"expected a mapping of sections, got {type(data).__name__}")])
    moved = _renamed_key_problems(data)
    if moved:  # report them instead of pydantic's bare "unknown key", together with every other problem
        data = {sec: ({k: v for k, v in body.items() if f"{sec}.{k}" not in RENAMED_KEYS}
                      if isinstance(body, dict) else body) for sec, body in data.items()}
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, moved + _format_validation_error(err)) from None
    if moved:
        raise ConfigError(source, moved)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(source, [("<file>", "config file not found")]) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(source, [("<file>", f"invalid YAML: {err}")]) from err
    overrides = list(overrides)
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return config_from_dict(apply_overrides(data, overrides), source)


def load_job_config(argv: Sequence[str] | None, *, default_config: str, description: str, job: str) -> Config:
    """The shared front of every ``jobs/<name>.py``: parse ``--config FILE`` + dotted overrides,
    set up logging, log the resolved config and return it.

    A bad config prints every problem and exits with status 2 (``SystemExit``), before any work.
    """
    import argparse
    import logging
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help="YAML config file (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    logging.getLogger(f"jobs.{job}").info("resolved config:\n%s", cfg.to_yaml())
    return cfg


def serve_settings(path: str, overrides: Sequence[str] = (), **flags: Any) -> Any:
    """The :class:`~vhindex.config.ServeSection` of a Serve config file (first application's ``args`` +
    ``http_options``), with ``key=value`` overrides and non-None ``flags`` applied."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    apps = doc.get("applications") or []
    if not apps:
        raise ConfigError(path, [("applications", "missing: a Serve config lists its applications")])
    data = dict(apps[0].get("args") or {})
    http = doc.get("http_options") or {}
    data.setdefault("host", http.get("host", "127.0.0.1"))
    data.setdefault("port", http.get("port", 8000))
    if doc.get("proxy_location"):
        data.setdefault("proxy_location", doc["proxy_location"])
    data.setdefault("app_name", apps[0].get("name", "vhindex"))
    data.setdefault("route_prefix", apps[0].get("route_prefix", "/"))
    data = apply_overrides(data, overrides)
    data.update({k: v for k, v in flags.items() if v is not None})
    try:
        return ServeSection.model_validate(data)
    except Exception as err:  # pydantic ValidationError -> one clear message
        raise ConfigError(path, [("applications[0].args", str(err))]) from None
