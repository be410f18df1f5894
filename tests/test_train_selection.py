"""Validation epoch selection (:class:`vhindex.train.common.BestEpoch`) survives a kill: a run resumed from
its checkpoint chooses among all its epochs and restores the same weights as a run that never stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vhindex.data import FrameDataset, FrameDatasetMeta, FrameDatasetWriter
from vhindex.models import build_model
from vhindex.train.common import BestEpoch

M, D, C = 6, 16, 4


def _labelled(url: str, n: int, seed: int) -> FrameDataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    centres = rng.standard_normal((C, D)).astype(np.float32)
    feats = centres[labels][:, None, :] + 0.8 * rng.standard_normal((n, M, D)).astype(np.float32)
    meta = FrameDatasetMeta(num_frames=M, feature_dim=D, dtype="float32", extractor="test", num_classes=C)
    with FrameDatasetWriter(url, meta, with_labels=True) as w:
        w.write([f"v{seed}-{i}" for i in range(n)], feats, [[int(c)] for c in labels])
    return FrameDataset.open(url)


def _weights(epoch: int) -> dict[str, torch.Tensor]:
    """The 'trained' weights after ``epoch``: a seeded re-initialisation, so every epoch scores differently
    and the same epoch always gives the same weights (as an exactly resumed loop does)."""
    torch.manual_seed(100 + epoch)
    return build_model("conmh", 16, num_frames=M, feature_dim=D, device="cpu", width=16, depth=1, heads=2,
                       dec_width=8, dec_depth=1, dec_heads=2).net.state_dict()


def _run(selector: BestEpoch, model, epochs: range) -> None:
    for e in epochs:
        model.net.load_state_dict(_weights(e))
        selector(model.net, e)


@pytest.fixture()
def split(tmp_path):
    return _labelled(str(tmp_path / "q"), 30, 1), _labelled(str(tmp_path / "db"), 90, 2)


def test_best_epoch_resumes_its_curve_and_weights_after_a_kill(tmp_path, split):
    model = build_model("conmh", 16, num_frames=M, feature_dim=D, device="cpu", width=16, depth=1, heads=2,
                        dec_width=8, dec_depth=1, dec_heads=2)
    epochs = 8
    # oracle: one uninterrupted run, in memory
    straight = BestEpoch(model, *split)
    _run(straight, model, range(epochs))
    want = straight.summary()
    assert len(set(want["curve"])) > 1  # the epochs differ, so the choice means something
    straight.restore()
    want_weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    assert all(torch.equal(want_weights[k], v) for k, v in _weights(want["best_epoch"] - 1).items())

    for killed_after in range(epochs - 1):
        state = str(tmp_path / f"select-{killed_after}")
        # the killed process: evaluated epochs 0..killed_after + 1, checkpointed only through killed_after
        first = BestEpoch(model, *split, state_url=state)
        _run(first, model, range(killed_after + 2))
        del first
        # the resumed process: a new instance, the loop re-runs from killed_after + 1
        resumed = BestEpoch(model, *split, state_url=state)
        assert len(resumed.curve) == killed_after + 2
        _run(resumed, model, range(killed_after + 1, epochs))
        assert resumed.summary() == want, killed_after
        assert [p.name for p in Path(state).glob("best-*.pt")] == [f"best-{want['best_epoch'] - 1:05d}.pt"]
        model.net.load_state_dict(_weights(epochs - 1))  # the last epoch's weights, as the loop leaves them
        resumed._state = None  # what a resumed process has when the best epoch came before the kill
        resumed.restore()
        assert all(torch.equal(want_weights[k], v) for k, v in model.net.state_dict().items()), killed_after


def test_best_epoch_state_of_another_metric_is_refused(tmp_path, split):
    model = build_model("conmh", 16, num_frames=M, feature_dim=D, device="cpu", width=16, depth=1, heads=2,
                        dec_width=8, dec_depth=1, dec_heads=2)
    state = str(tmp_path / "select")
    _run(BestEpoch(model, *split, state_url=state), model, range(2))
    with pytest.raises(ValueError, match="mAP@20, not mAP@5"):
        BestEpoch(model, *split, k=5, state_url=state)
