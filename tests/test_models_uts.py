"""UTS Net (vhindex.models.uts): the PCA-fc teacher against numpy PCA, the loss terms against hand-computed values,
the student's replaced block and the frozen teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vhindex.models.uts import (
    UTSStudent,
    UTSTeacher,
    intra_batch_similarity,
    pca_fc,
    teacher_student_similarity,
    uts_loss,
)

R = 1 / math.sqrt(2)


def test_pca_fc_equals_numpy_pca_whitening():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12)) + rng.standard_normal(12) * 3
    weight, bias = pca_fc(f, 5)
    # numpy PCA by SVD of the centred data: components = right singular vectors, variances = S^2 / m (eq. 1)
    centred = f - f.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    comps, var = vt[:5], sing[:5] ** 2 / len(f)
    comps *= np.sign(comps[np.arange(5), np.abs(comps).argmax(axis=1)])[:, None]  # the same sign convention
    want = centred @ comps.T / np.sqrt(var)
    got = f @ weight.T + bias
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.T @ got / len(f), np.eye(5), atol=1e-4)  # whitened: unit variance, decorrelated
    with pytest.raises(ValueError, match="out_dim=12"):
        pca_fc(f[:10], 12)


def test_loss_terms_equal_hand_computed_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    # sorted cosine rows (descending), ranks [round(0.25*4), round(0.75*4)) = [1, 3):
    # row 1: 1, .707, 0, -1 -> .707, 0; row 2: 1, .707, 0, 0 -> .707, 0; row 3: 1, .707, .707, -.707 -> .707, .707;
    # row 4: 1, 0, -.707, -1 -> 0, -.707
    local = ((R + 0) / 2 + (R + 0) / 2 + (R + R) / 2 + (0 - R) / 2) / 4
    assert math.isclose(intra_batch_similarity(x, 0.25, 0.75).item(), local, rel_tol=1e-6)
    t = torch.tensor([[1.0, 1.0], [0.0, 2.0], [1.0, 1.0], [1.0, 0.0]])
    glob = (R + 1 + 1 - 1) / 4  # cos(x_i, t_i)
    assert math.isclose(teacher_student_similarity(x, t).item(), glob, rel_tol=1e-6)
    got = uts_loss(x, x, t, alpha=0.25, beta=0.75)
    assert math.isclose(got["total"].item(), 2 * (1 - glob) * 2 + 1 * local * 2, rel_tol=1e-6)
    weighted = uts_loss(x, x * 0 + t, t, alpha=0.25, beta=0.75, lambdas=(1.0, 3.0, 0.5, 0.0))
    assert math.isclose(weighted["global_plain"].item(), 1.0, rel_tol=1e-6)  # s* == t
    assert math.isclose(weighted["total"].item(), 1 * (1 - glob) + 3 * 0.0 + 0.5 * local, rel_tol=1e-6)
    with pytest.raises(ValueError, match="are empty"):
        intra_batch_similarity(x[:2], 0.3, 0.4)  # ranks [1, 1) of a batch of 2


def test_student_replaces_the_last_block_and_teacher_stays_frozen():
    from vhindex.features.backbones import EfficientNetLite0

    torch.manual_seed(0)
    student = UTSStudent(EfficientNetLite0(), out_dim=16, width=32).train()
    assert len(student.blocks) == 15  # Lite0's 16 MBConv blocks minus the replaced last one
    names = [type(m).__name__ for m in student.head]
    assert names == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"]
    x = torch.randn(6, 3, 64, 64)
    out = student(x)
    assert out.shape == (6, 16)
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(16), atol=1e-4, rtol=0)  # zero-mean, like the PCA
    backbone = EfficientNetLite0()
    feats = torch.randn(40, 1280).numpy()
    weight, bias = pca_fc(feats, 16)
    teacher = UTSTeacher(backbone, weight, bias).train()
    assert not teacher.training and not teacher.backbone.training
    assert all(not p.requires_grad for p in teacher.parameters())
    t = teacher(x)
    torch.testing.assert_close(t, teacher.fc(backbone(x)))
    uts_loss(out, student(x), t, alpha=0.2, beta=0.8)["total"].backward()
    assert student.head[0].weight.grad is not None and student.blocks[0]._depthwise_conv.weight.grad is not None
