"""Split a dataset's row groups into read tasks (pure: no IO).

A dataset is a list of Parquet files, each a list of row groups with known row counts (from the
manifest). A :class:`ReadTask` is a contiguous run of row groups in (file, row group) order,
described by :class:`Piece` s (one per file it touches). Distributed stages (Ray Data, Dask) give
one task to each worker; :meth:`vhindex.data.FrameDataset.iter_batches` reads any subset of them.

Guarantees of :func:`plan_tasks`:

* every row group of every file is in exactly one task, and tasks (and pieces within a task)
  follow (file, row group) order, so concatenating the tasks reproduces the dataset order;
* no task is empty (has zero rows); zero-row row groups ride along with a neighbouring task and a
  dataset with zero rows gives no task at all;
* tasks are balanced by rows: task boundaries are the row-group boundaries closest to the ideal
  cut points ``total * j / num_tasks``;
* row groups are never split, so there are at most as many tasks as non-empty row groups and a
  row group larger than ``max_rows_per_task`` becomes a task of its own.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence

__all__ = ["Piece", "ReadTask", "plan_tasks"]


@dataclasses.dataclass(frozen=True)
class Piece:
    """Row groups ``[row_group_start, row_group_stop)`` of the file at ``file_index``."""

    file_index: int
    row_group_start: int
    row_group_stop: int


@dataclasses.dataclass(frozen=True)
class ReadTask:
    """A contiguous run of row groups to be read by one worker.

    Attributes:
        task_id: position of the task in the plan (0, 1, ...).
        pieces: the row-group ranges, one per file touched, in dataset order.
        num_rows: total rows of the task (> 0).
    """

    task_id: int
    pieces: tuple[Piece, ...]
    num_rows: int


def _check_positive(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def plan_tasks(
    row_group_rows: Sequence[Sequence[int]],
    num_tasks: int | None = None,
    max_rows_per_task: int | None = None,
) -> list[ReadTask]:
    """Plan balanced, contiguous read tasks over the row groups of a dataset.

    Args:
        row_group_rows: for each file, the row count of each of its row groups
            (``manifest.files[i].row_group_rows``). Files without row groups are allowed.
        num_tasks: desired number of tasks. Fewer are returned when there are fewer non-empty
            row groups; more when ``max_rows_per_task`` needs more.
        max_rows_per_task: upper bound on the rows of a task (except a single row group larger
            than the bound, which becomes its own task).

    With neither ``num_tasks`` nor ``max_rows_per_task`` a single task covers the dataset.

    Returns:
        The tasks, in dataset order, with ``task_id`` 0, 1, ...; ``[]`` when the dataset has no rows.

    Raises:
        ValueError: when an argument is not a positive int / a row count is negative.
    """
    _check_positive("num_tasks", num_tasks)
    _check_positive("max_rows_per_task", max_rows_per_task)
    flat: list[tuple[int, int, int]] = []  # (file_index, row_group_index, rows)
    for fi, groups in enumerate(row_group_rows):
        for gi, rows in enumerate(groups):
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ValueError(
                    f"row_group_rows[{fi}][{gi}] must be a non-negative int, got {rows!r}"
                )
            flat.append((fi, gi, rows))
    nonempty = [i for i, (_, _, rows) in enumerate(flat) if rows > 0]
    if not nonempty:
        return []
    weights = [flat[i][2] for i in nonempty]
    n = len(weights)
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    total = prefix[-1]

    k = num_tasks or 1
    if max_rows_per_task is not None:
        k = max(k, math.ceil(total / max_rows_per_task))
    k = min(k, n)
    while True:
        cuts = _balanced_cuts(prefix, k)
        if max_rows_per_task is None or k == n or _fits(prefix, cuts, max_rows_per_task):
            break
        k += 1  # at k == n every task is one row group, which always "fits"

    # Map cuts (indices into the non-empty row groups) to positions in the flat list: a task
    # starts at its first non-empty row group; zero-row groups before it belong to it.
    starts = [0] + [nonempty[c] for c in cuts[1:-1]] + [len(flat)]
    tasks = []
    for t in range(len(starts) - 1):
        a, b = starts[t], starts[t + 1]
        pieces: list[Piece] = []
        for fi, gi, _ in flat[a:b]:
            if pieces and pieces[-1].file_index == fi:
                last = pieces[-1]
                pieces[-1] = Piece(fi, last.row_group_start, gi + 1)
            else:
                pieces.append(Piece(fi, gi, gi + 1))
        rows = prefix[cuts[t + 1]] - prefix[cuts[t]]
        assert rows > 0
        tasks.append(ReadTask(task_id=t, pieces=tuple(pieces), num_rows=rows))
    return tasks


def _balanced_cuts(prefix: list[int], k: int) -> list[int]:
    """Cut points ``0 = c_0 < c_1 < ... < c_k = n`` with ``prefix[c_j]`` near ``total * j / k``."""
    n = len(prefix) - 1
    total = prefix[-1]
    cuts = [0]
    for j in range(1, k):
        ideal = total * j / k
        hi = bisect.bisect_left(prefix, ideal)
        candidates = [c for c in (hi - 1, hi) if 0 <= c <= n]
        best = min(candidates, key=lambda c: (abs(prefix[c] - ideal), c))
        # Keep every task non-empty: room for this one and the k - j still to come.
        best = max(best, cuts[-1] + 1)
        best = min(best, n - (k - j))
        cuts.append(best)
    cuts.append(n)
    return cuts


def _fits(prefix: list[int], cuts: list[int], limit: int) -> bool:
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if prefix[b] - prefix[a] > limit and b - a > 1:
            return False
    return True
