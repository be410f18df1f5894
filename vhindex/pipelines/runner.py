"""Driver of sharded jobs: plan, skip finished shards, run the rest on an engine, report, finalise.

An *engine* runs shards: :func:`run_local` processes them one after another in this process;
``cluster.data.run_on_ray`` runs them on a Ray Data actor pool (model loaded once per actor).
Both call the same :class:`ShardProcessor`, so the bytes written do not depend on the engine.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

from vhindex.pipelines.shards import ShardedOutput, ShardSpec, ShardStats, fingerprint_hash

__all__ = ["JobReport", "ShardOutcome", "ShardProcessor", "ShardedJob", "run_local", "run_sharded_job"]

logger = logging.getLogger(__name__)


class ShardProcessor(Protocol):
    """Processes one shard: writes its outputs (see :class:`~vhindex.pipelines.shards.ShardedOutput`)."""

    def process(self, spec: ShardSpec) -> ShardStats:  # pragma: no cover - protocol
        """Write the shard's dataset, error rows and marker; return the marker's contents."""


@dataclasses.dataclass
class ShardOutcome:
    """What an engine reports for one shard: its stats, or why the whole shard failed.

    A *shard failure* (storage unreachable, model file corrupt, ...) is different from a per-video
    error: the shard wrote no marker and is retried by the next run.
    """

    name: str
    stats: ShardStats | None = None
    error: str | None = None


class ShardedJob(abc.ABC):
    """A job made of shards. Subclasses plan the shards and build the (picklable) processor factory."""

    kind: str = "job"

    def __init__(self, output: ShardedOutput) -> None:
        self.output = output

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the output; a folder holding another fingerprint is refused."""

    @abc.abstractmethod
    def plan(self) -> list[ShardSpec]:
        """The deterministic shard plan (same inputs -> same shards)."""

    @abc.abstractmethod
    def processor_factory(self) -> Callable[[], ShardProcessor]:
        """A picklable zero-argument callable building a processor (called once per actor)."""

    @abc.abstractmethod
    def dataset_meta(self) -> dict[str, Any]:
        """The dataset metadata every shard's manifest carries (for the top-level manifest)."""


Engine = Callable[[Callable[[], ShardProcessor], Sequence[ShardSpec], Callable[[ShardOutcome], None]], None]


def run_local(factory: Callable[[], ShardProcessor], specs: Sequence[ShardSpec],
              on_outcome: Callable[[ShardOutcome], None]) -> None:
    """Engine: process ``specs`` one by one in this process (a shard failure does not stop the rest)."""
    processor = factory()
    for spec in specs:
        try:
            outcome = ShardOutcome(spec.name, stats=processor.process(spec))
        except Exception as err:  # noqa: BLE001 -- a failed shard is reported and retried by the next run
            logger.exception("shard %s failed", spec.name)
            outcome = ShardOutcome(spec.name, error=f"{type(err).__name__}: {err}")
        on_outcome(outcome)


@dataclasses.dataclass
class JobReport:
    """The result of :func:`run_sharded_job`.

    Attributes:
        kind: job kind.
        out: output URL.
        engine: engine name.
        shards: shards in the plan.
        shards_skipped: shards already finished by an earlier run (not re-run).
        shards_run: shards finished by this run.
        shards_failed: ``(shard, error)`` of shards that failed as a whole (retried by a re-run).
        videos: inputs in the plan.
        ok: output rows (all shards, including skipped ones).
        errors: per-video error rows (all shards).
        error_counts: errors by reason.
        max_error_fraction: the configured threshold.
        seconds: wall time of this run.
        videos_run: inputs processed by this run (for throughput).
        complete: the dataset manifest exists (every shard finished).
    """

    kind: str
    out: str
    engine: str
    shards: int
    shards_skipped: int
    shards_run: int
    shards_failed: list[tuple[str, str]]
    videos: int
    ok: int
    errors: int
    error_counts: dict[str, int]
    max_error_fraction: float
    seconds: float
    videos_run: int
    complete: bool

    @property
    def error_fraction(self) -> float:
        """Per-video errors over inputs."""
        return self.errors / self.videos if self.videos else 0.0

    @property
    def videos_per_second(self) -> float:
        """Throughput of this run."""
        return self.videos_run / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when complete and errors within the threshold, else 1."""
        return 0 if self.complete and not self.shards_failed and self.error_fraction <= self.max_error_fraction else 1

    def summary_line(self) -> str:
        """One line for logs and CLIs."""
        status = "complete" if self.complete else "INCOMPLETE"
        line = (f"{self.kind} {status}: {self.ok}/{self.videos} videos ok, {self.errors} errors "
                f"({100 * self.error_fraction:.2f}%, limit {100 * self.max_error_fraction:.2f}%); shards "
                f"{self.shards_run} run + {self.shards_skipped} skipped of {self.shards}")
        if self.shards_failed:
            line += f", {len(self.shards_failed)} FAILED (re-run to retry): {self.shards_failed[0][0]}: {self.shards_failed[0][1]}"
        if self.videos_run:
            line += f"; {self.videos_run} videos in {self.seconds:.1f}s ({self.videos_per_second:.1f} videos/s)"
        if self.error_counts:
            line += f"; errors by reason {dict(sorted(self.error_counts.items()))}"
        return line + f" -> {self.out}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with the derived figures)."""
        d = dataclasses.asdict(self)
        d.update(error_fraction=self.error_fraction, videos_per_second=self.videos_per_second,
                 exit_code=self.exit_code)
        return d


class _Progress:
    """Driver-side progress: counts, throughput and ETA every ``every_s`` seconds."""

    def __init__(self, total_videos: int, total_shards: int, every_s: float, stream: TextIO | None) -> None:
        self.total_videos, self.total_shards = total_videos, total_shards
        self.every_s, self.stream = every_s, stream
        self.t0 = self.last = time.monotonic()
        self.videos = self.shards = self.ok = self.errors = self.failed = 0

    def update(self, outcome: ShardOutcome, force: bool = False) -> None:
        self.shards += 1
        if outcome.stats is not None:
            self.videos += outcome.stats.inputs
            self.ok += outcome.stats.ok
            self.errors += outcome.stats.errors
        else:
            self.failed += 1
        now = time.monotonic()
        if self.stream is not None and (force or now - self.last >= self.every_s or self.shards == self.total_shards):
            self.last = now
            rate = self.videos / max(now - self.t0, 1e-9)
            left = self.total_videos - self.videos
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            print(f"[progress] shards {self.shards}/{self.total_shards} | videos {self.videos}/{self.total_videos} "
                  f"({self.ok} ok, {self.errors} errors, {self.failed} shards failed) | {rate:.1f} videos/s | "
                  f"eta {eta}", file=self.stream, flush=True)


def run_sharded_job(job: ShardedJob, engine: Engine = run_local, *, engine_name: str = "local",
                    max_error_fraction: float = 0.01, progress_every_s: float = 10.0,
                    stream: TextIO | None = sys.stderr) -> JobReport:
    """Run ``job`` to completion (or as far as it gets), resuming an earlier partial run.

    Finished shards (marker present, same fingerprint) are skipped; the others run on ``engine``;
    when every shard is finished, the dataset manifest and ``_job_stats.json`` are written.

    Args:
        job: the job.
        engine: :func:`run_local` or ``cluster.data.ray_engine(...)``.
        engine_name: recorded in the report.
        max_error_fraction: per-video error fraction above which the report's exit code is 1.
        progress_every_s: seconds between progress lines.
        stream: where progress goes (None: silent).

    Returns:
        The :class:`JobReport` (``exit_code`` 0 when complete and within the error threshold).
    """
    t0 = time.monotonic()
    fingerprint = job.fingerprint()
    specs = job.plan()
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RuntimeError("the shard plan repeats a shard name")
    total = sum(s.num_inputs for s in specs)
    already_complete = job.output.start(job.kind, fingerprint)
    done = job.output.completed(specs, fingerprint)
    pending = [s for s in specs if s.name not in done]
    if stream is not None:
        print(f"[{job.kind}] {len(specs)} shards / {total} videos -> {job.output.url}: {len(done)} shards already "
              f"done, {len(pending)} to run on {engine_name}", file=stream, flush=True)
    outcomes: dict[str, ShardOutcome] = {}
    progress = _Progress(sum(s.num_inputs for s in pending), len(pending), progress_every_s, stream)

    def on_outcome(outcome: ShardOutcome) -> None:
        if outcome.name in outcomes and outcomes[outcome.name].stats is not None:
            raise RuntimeError(f"engine reported shard {outcome.name} twice")
        outcomes[outcome.name] = outcome
        progress.update(outcome)

    if pending:
        engine(job.processor_factory(), pending, on_outcome)
    want = fingerprint_hash(fingerprint)
    failed: list[tuple[str, str]] = []
    for spec in pending:
        oc = outcomes.get(spec.name)
        if oc is None:
            failed.append((spec.name, "the engine returned no result for this shard"))
        elif oc.stats is None:
            failed.append((spec.name, oc.error or "unknown error"))
        elif oc.stats.fingerprint != want or oc.stats.ok + oc.stats.errors != spec.num_inputs:
            failed.append((spec.name, f"inconsistent stats {oc.stats.to_dict()}"))
        else:
            done[spec.name] = oc.stats
    all_stats = [done[s.name] for s in specs if s.name in done]
    error_counts: dict[str, int] = {}
    for st in all_stats:
        for reason, n in st.error_counts.items():
            error_counts[reason] = error_counts.get(reason, 0) + int(n)
    report = JobReport(
        kind=job.kind, out=job.output.url, engine=engine_name, shards=len(specs),
        shards_skipped=len(specs) - len(pending), shards_run=len(pending) - len(failed), shards_failed=failed,
        videos=total, ok=sum(st.ok for st in all_stats), errors=sum(st.errors for st in all_stats),
        error_counts=error_counts, max_error_fraction=max_error_fraction, seconds=time.monotonic() - t0,
        videos_run=sum(outcomes[s.name].stats.inputs for s in pending
                       if s.name in outcomes and outcomes[s.name].stats is not None),
        complete=False,
    )
    if not failed:
        report.complete = True
        if not (already_complete and not pending):
            summary = {**report.to_dict(), "fingerprint": fingerprint, "shard_stats": [st.to_dict() for st in all_stats]}
            job.output.finalize(specs, done, job.dataset_meta(), summary)
    if stream is not None:
        print(f"[{job.kind}] {report.summary_line()}", file=stream, flush=True)
    return report
