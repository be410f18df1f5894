"""plan_tasks: exhaustive checks over small layouts plus hand-built cases."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from vhindex.data.planner import Piece, ReadTask, plan_tasks


def _expand(tasks: list[ReadTask]) -> list[tuple[int, int]]:
    return [(p.file_index, g) for t in tasks for p in t.pieces for g in range(p.row_group_start, p.row_group_stop)]


def _check_plan(layout: list[list[int]], num_tasks: int | None, max_rows: int | None) -> list[ReadTask]:
    tasks = plan_tasks(layout, num_tasks, max_rows)
    all_groups = [(f, g) for f, groups in enumerate(layout) for g in range(len(groups))]
    total = sum(map(sum, layout))
    nonempty = sum(1 for groups in layout for r in groups if r > 0)
    if total == 0:
        assert tasks == []
        return tasks
    # every row group exactly once, in (file, row group) order
    assert _expand(tasks) == all_groups
    assert [t.task_id for t in tasks] == list(range(len(tasks)))
    for t in tasks:
        rows = sum(layout[p.file_index][g] for p in t.pieces for g in range(p.row_group_start, p.row_group_stop))
        assert rows == t.num_rows > 0
        files = [p.file_index for p in t.pieces]
        assert files == sorted(set(files))
        assert all(p.row_group_start < p.row_group_stop for p in t.pieces)
    assert sum(t.num_rows for t in tasks) == total
    biggest = max(r for groups in layout for r in groups)
    if max_rows is None:
        k = min(num_tasks or 1, nonempty)
        assert len(tasks) == k
        # balance: a boundary is at most one row group away from the ideal cut
        assert max(t.num_rows for t in tasks) <= math.ceil(total / k) + biggest
    else:
        for t in tasks:
            groups = [layout[p.file_index][g] for p in t.pieces for g in range(p.row_group_start, p.row_group_stop)]
            assert t.num_rows <= max_rows or sum(1 for r in groups if r) == 1
        assert len(tasks) >= min(num_tasks or 1, nonempty)
    return tasks


def test_exhaustive_small_layouts():
    sizes = (0, 1, 3)
    files = [list(c) for n in range(3) for c in itertools.product(sizes, repeat=n)]
    count = 0
    for nfiles in range(4):
        for layout in itertools.product(files, repeat=nfiles):
            for num_tasks in (None, 1, 2, 3, 7):
                for max_rows in (None, 1, 2, 4):
                    _check_plan([list(f) for f in layout], num_tasks, max_rows)
                    count += 1
    assert count > 40_000


def test_random_larger_layouts():
    rng = random.Random(0)
    for _ in range(300):
        layout = [[rng.choice((0, 1, 5, 100, 1000)) for _ in range(rng.randrange(0, 8))] for _ in range(rng.randrange(1, 6))]
        _check_plan(layout, rng.choice((None, 1, 2, 4, 16, 64)), rng.choice((None, 50, 1000, 5000)))


def test_hand_built_balanced_split():
    tasks = plan_tasks([[10, 10, 10, 10]], num_tasks=2)
    assert tasks == [
        ReadTask(0, (Piece(0, 0, 2),), 20),
        ReadTask(1, (Piece(0, 2, 4),), 20),
    ]
    tasks = plan_tasks([[5], [5], [5]], num_tasks=3)
    assert [t.pieces for t in tasks] == [(Piece(0, 0, 1),), (Piece(1, 0, 1),), (Piece(2, 0, 1),)]


def test_zero_row_groups_and_empty_files_ride_along():
    tasks = plan_tasks([[0, 5, 0], [0], [], [5, 0]], num_tasks=2)
    assert tasks == [
        ReadTask(0, (Piece(0, 0, 3), Piece(1, 0, 1)), 5),
        ReadTask(1, (Piece(3, 0, 2),), 5),
    ]
    assert plan_tasks([[0, 0], []], num_tasks=3) == []
    assert plan_tasks([]) == []


def test_more_tasks_than_row_groups_gives_one_per_row_group():
    tasks = plan_tasks([[4, 4], [4]], num_tasks=10)
    assert [t.num_rows for t in tasks] == [4, 4, 4]


def test_max_rows_per_task():
    assert [t.num_rows for t in plan_tasks([[3, 3, 3, 3]], max_rows_per_task=6)] == [6, 6]
    assert [t.num_rows for t in plan_tasks([[3, 3, 3, 3]], max_rows_per_task=5)] == [3, 3, 3, 3]
    # an oversized row group is a task of its own
    assert [t.num_rows for t in plan_tasks([[10], [1]], max_rows_per_task=5)] == [10, 1]
    # max_rows wins over a smaller num_tasks
    assert len(plan_tasks([[2] * 10], num_tasks=2, max_rows_per_task=4)) == 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (([[1]], 0), "num_tasks"),
        (([[1]], -2), "num_tasks"),
        (([[1]], True), "num_tasks"),
        (([[1]], 1.5), "num_tasks"),
        (([[1]], None, 0), "max_rows_per_task"),
        (([[1, -1]],), r"row_group_rows\[0\]\[1\]"),
        (([[1, "3"]],), r"row_group_rows\[0\]\[1\]"),
    ],
)
def test_invalid_arguments(args, needle):
    with pytest.raises(ValueError, match=needle):
        plan_tasks(*args)
