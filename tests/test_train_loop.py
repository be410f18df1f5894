"""The shared training loop: schedule, determinism, exact resume, checkpoint/metrics files, sharding."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
import torch
from torch import nn

from vhindex.train.loop import (
    LATEST_FILE,
    LoopSpec,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    run_training,
    shard_batches,
)

D = 6


class _Net(nn.Module):
    """A tiny module with dropout, so the global torch RNG matters for determinism."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, 8)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(8, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.lin(x))))


def _data(n: int = 40) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(n, D)).astype(np.float32)


_DATA = _data()


def _batches(epoch: int, data: np.ndarray = _DATA, bs: int = 8):
    order = np.random.default_rng([3, epoch]).permutation(len(data))  # per-epoch seed: resume-safe
    for s in range(0, len(data), bs):
        yield torch.from_numpy(data[order[s:s + bs]])


def _step(module: nn.Module, batch: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    noise = torch.rand(batch.shape, generator=gen) < 0.2  # uses the loop's generator, like masking
    recon = module(batch.masked_fill(noise, 0.0))
    mse = ((recon - batch) ** 2).mean()
    return {"total": mse, "mse": mse}


def _fresh(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _Net()


def _train(epochs: int, ckpt=None, metrics=None, **kw):
    module = _fresh()
    res = run_training(LoopSpec(epochs=epochs, seed=1, lr=1e-2), module=module, step_fn=kw.pop("step_fn", _step),
                       batches=kw.pop("batches", _batches), ckpt_url=ckpt, metrics_url=metrics, progress=False, **kw)
    return module, res


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lr_schedule_matches_the_released_one():
    spec = LoopSpec(epochs=1)
    assert lr_at(spec, 0) == pytest.approx(3e-4)
    assert lr_at(spec, 19) == pytest.approx(3e-4)
    assert lr_at(spec, 20) == pytest.approx(2.7e-4)
    assert lr_at(spec, 40) == pytest.approx(3e-4 * 0.81)
    assert lr_at(spec, 100) == pytest.approx(3e-4 * 0.9 ** 5)  # 1.77e-4: still above the floor
    assert lr_at(spec, 219) == pytest.approx(3e-4 * 0.9 ** 10)  # 1.05e-4
    assert lr_at(spec, 220) == pytest.approx(1e-4)  # 3e-4 * 0.9**11 = 9.4e-5 -> floor
    assert lr_at(spec, 1000) == pytest.approx(1e-4)


def test_lr_is_set_per_epoch_in_the_metrics(tmp_path):
    spec = LoopSpec(epochs=3, lr=1.0, lr_decay=0.5, lr_decay_every=1, lr_min=0.3)
    res = run_training(spec, module=_fresh(), step_fn=_step, batches=_batches, ckpt_url=None, progress=False)
    assert [m["lr"] for m in res.metrics] == [1.0, 0.5, 0.3]


def test_same_seed_gives_identical_losses_and_weights():
    m1, r1 = _train(2)
    m2, r2 = _train(2)
    assert [m["loss_total"] for m in r1.metrics] == [m["loss_total"] for m in r2.metrics]
    assert _same_weights(m1, m2)
    assert r1.steps == 10 and r1.metrics[-1]["videos"] == 40


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    straight, full = _train(4, ckpt=str(tmp_path / "a"))

    class Killed(RuntimeError):
        pass

    calls = {"n": 0}

    def dying_step(module, batch, gen):
        calls["n"] += 1
        if calls["n"] == 13:  # in epoch 3 (5 steps per epoch), after the epoch-2 checkpoint
            raise Killed
        return _step(module, batch, gen)

    with pytest.raises(Killed):
        _train(4, ckpt=str(tmp_path / "b"), step_fn=dying_step)
    assert latest_checkpoint(str(tmp_path / "b"))["epoch"] == 1
    resumed, res = _train(4, ckpt=str(tmp_path / "b"))
    assert res.resumed and res.start_epoch == 2 and res.epochs_run == 2
    assert _same_weights(straight, resumed)
    assert [m["loss_total"] for m in res.metrics] == [m["loss_total"] for m in full.metrics]
    assert res.steps == full.steps == 20
    # a finished run re-run trains nothing and keeps the weights
    again, res2 = _train(4, ckpt=str(tmp_path / "b"))
    assert res2.epochs_run == 0 and _same_weights(again, straight)


def test_resume_with_evaluation_in_between_is_identical(tmp_path):
    def eval_fn(module, epoch):
        torch.rand(3)  # evaluation that consumes the global RNG must not shift training
        return {"score": float(epoch)}

    straight, full = _train(3, ckpt=str(tmp_path / "a"), eval_fn=eval_fn, eval_every=1)
    _train(2, ckpt=str(tmp_path / "b"), eval_fn=eval_fn, eval_every=1)
    resumed, res = _train(3, ckpt=str(tmp_path / "b"), eval_fn=eval_fn, eval_every=1)
    assert _same_weights(straight, resumed)
    assert [m["eval_score"] for m in res.metrics] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_checkpoint_and_metrics_files(tmp_path, where):
    base = str(tmp_path) if where == "local" else "memory://train-loop-test"
    ckpt, metrics = f"{base}/ckpt", f"{base}/metrics"
    reports = []
    _, res = _train(3, ckpt=ckpt, metrics=metrics, report=lambda m, d: reports.append((m, d)))
    fs, root = fsspec.core.url_to_fs(ckpt)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    assert names == ["epoch-00001.pt", "epoch-00002.pt", LATEST_FILE]  # keep_checkpoints=2, pointer
    pointer = json.loads(fs.cat(f"{root}/{LATEST_FILE}"))
    assert pointer["epoch"] == 2 and pointer["file"] == "epoch-00002.pt"
    ck = load_checkpoint(ckpt)
    assert ck["epoch"] == 2 and ck["step"] == 15 and len(ck["metrics"]) == 3
    assert set(ck["rng"]) >= {"torch", "generator", "numpy"} and "optimizer" in ck
    with fsspec.open(f"{metrics}/metrics.jsonl", "rt") as fh:
        lines = [json.loads(x) for x in fh.read().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    for key in ("step", "lr", "seconds", "videos_per_s", "loss_total", "loss_mse"):
        assert key in lines[0]
    # the report hook: once per epoch, with a local folder holding that epoch's checkpoint
    assert [m["epoch"] for m, _ in reports] == [0, 1, 2] and all(d is not None for _, d in reports)
    if where == "memory":
        fsspec.filesystem("memory").rm("/train-loop-test", recursive=True)


def test_corrupt_checkpoint_is_refused(tmp_path):
    _train(1, ckpt=str(tmp_path))
    (tmp_path / "epoch-00000.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        _train(2, ckpt=str(tmp_path))


def test_shard_batches_every_world_size_th_and_equal_counts():
    items = list(range(11))
    shards = [list(shard_batches(iter(items), r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # the incomplete round (9, 10) is dropped
    assert list(shard_batches(iter(items), 0, 1)) == items
    with pytest.raises(ValueError):
        list(shard_batches(iter(items), 3, 3))


def test_ranks_see_their_share(tmp_path):
    seen = {0: [], 1: []}

    def step(module, batch, gen):
        seen[rank].append(float(batch.sum()))
        return _step(module, batch, gen)

    for rank in (0, 1):
        _train(1, step_fn=step, rank=rank, world_size=2)
    all_batches = [float(b.sum()) for b in _batches(0)]
    assert seen[0] == all_batches[0:4:2] and seen[1] == all_batches[1:4:2]


def test_bad_step_fn_output_is_named():
    with pytest.raises(ValueError, match="'total'"):
        _train(1, step_fn=lambda m, b, g: {"loss": m(b).sum()})
