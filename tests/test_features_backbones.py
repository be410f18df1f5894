"""Backbones (vhindex.features.backbones): torchvision parity, strict loading, real Lite0 weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from vhindex.features.backbones import Backbone, available_backbones, build_backbone, register_backbone

torch.set_num_threads(2)


def _grace_hopper() -> str:
    import matplotlib

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    if not os.path.isfile(path):
        pytest.skip("matplotlib's sample_data/grace_hopper.jpg is not installed")
    return path


def _centre_crop(path: str, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(img.crop((left, top, left + size, top + size)))


@pytest.fixture(scope="module")
def tvm():
    """``torchvision.models`` (a test-only oracle), even when torchvision's C extension is broken.

    The model definitions are pure Python; only detection ops need ``torchvision._C``. A
    torchvision wheel built for another torch variant (``0.28.0+cu130`` next to ``torch+cpu``)
    fails in ``import torchvision`` itself, so on that failure the models are imported through
    a bare package stub that skips ``torchvision/__init__.py``. sys.modules is restored afterwards.
    """
    import importlib
    import importlib.util
    import sys
    import types

    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    try:
        import torchvision.models as models
    except ImportError:
        pytest.skip("torchvision is not installed (test extra)")
    except Exception:  # noqa: BLE001 - e.g. RuntimeError: operator torchvision::nms does not exist
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        spec = importlib.util.find_spec("torchvision")
        stub = types.ModuleType("torchvision")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__spec__ = spec
        sys.modules["torchvision"] = stub
        models = importlib.import_module("torchvision.models")
    yield models
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_registry():
    assert {"efficientnet_lite0", "vgg16_fc7", "resnet50_pool"} <= set(available_backbones())
    with pytest.raises(ValueError, match="efficientnet_lite0.*resnet50_pool.*vgg16_fc7"):
        build_backbone("alexnet")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("vgg16_fc7")(lambda **kw: None)


@pytest.mark.parametrize("name", ["vgg16_fc7", "resnet50_pool"])
def test_weights_are_required_and_never_downloaded(name):
    with pytest.raises(ValueError, match="needs a weights file"):
        build_backbone(name)


def test_vgg16_fc7_matches_torchvision(tmp_path, tvm):
    torch.manual_seed(0)
    ref = tvm.vgg16(weights=None).eval()
    path = str(tmp_path / "vgg16.pth")
    torch.save(ref.state_dict(), path)
    net = build_backbone("vgg16_fc7", weights=path)
    assert net.feature_dim == 4096 and net.weights_id.startswith("sha256:")
    x = torch.randn(2, 3, 64, 64)  # adaptive 7x7 pooling: any size works, small is fast
    with torch.inference_mode():
        want = ref.classifier[:5](torch.flatten(ref.avgpool(ref.features(x)), 1))
        got = net(x)
        assert got.shape == (2, 4096)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net.logits(x), ref(x), rtol=1e-4, atol=1e-5)
    assert (got >= 0).all()  # after the ReLU


def test_resnet50_pool_matches_torchvision(tmp_path, tvm):
    torch.manual_seed(1)
    ref = tvm.resnet50(weights=None)
    # Non-trivial batch-norm statistics, so that a wrongly wired layer cannot hide behind identity BN.
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    ref.eval()
    path = str(tmp_path / "resnet50.pth")
    torch.save(ref.state_dict(), path)
    net = build_backbone("resnet50_pool", weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        trunk = torch.nn.Sequential(*list(ref.children())[:-1])  # everything before fc
        want = torch.flatten(trunk(x), 1)
        got = net(x)
        assert got.shape == (2, 2048)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net.logits(x), ref(x), rtol=1e-4, atol=1e-4)


def test_weights_from_fsspec_url():
    import fsspec

    src = build_backbone("efficientnet_lite0")
    # Different, recognisable weights (integer batch counters stay as they are).
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in src.net.state_dict().items()}
    url = "memory://vhindex-tests/lite0-shifted.pth"
    with fsspec.open(url, "wb") as f:
        torch.save(state, f)
    try:
        net = build_backbone("efficientnet_lite0", weights=url)
        assert net.weights_id.startswith("sha256:")
        for k, v in net.net.state_dict().items():
            torch.testing.assert_close(v, state[k])
    finally:
        fsspec.filesystem("memory").rm(url)


def test_mismatching_weights_file_names_file_and_keys(tmp_path):
    wrong = str(tmp_path / "wrong-keys.pth")
    torch.save({"conv.weight": torch.zeros(3), "features.0.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    with pytest.raises(ValueError) as info:
        build_backbone("vgg16_fc7", weights=wrong)
    msg = str(info.value)
    assert "wrong-keys.pth" in msg and "missing" in msg and "features.0.bias" in msg and "conv.weight" in msg

    shapes = str(tmp_path / "wrong-shape.pth")
    state = build_backbone("efficientnet_lite0").net.state_dict()
    state["_fc.weight"] = torch.zeros(10, 1280)
    torch.save(state, shapes)
    with pytest.raises(ValueError, match=r"wrong-shape\.pth.*_fc\.weight"):
        build_backbone("efficientnet_lite0", weights=shapes)

    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        build_backbone("resnet50_pool", weights=str(not_torch))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("resnet50_pool", weights=str(tmp_path / "missing.pth"))


def test_lite0_bundled_weights_classify_a_real_photo():
    # Grace Hopper in US Navy dress uniform (matplotlib sample data). Measured with these weights:
    # top-1 "military uniform" (652) at 224 px, with suit (834) / Windsor tie (906) / academic gown
    # (400) / mortarboard (667) next.
    net = build_backbone("efficientnet_lite0")
    assert net.weights_id == "bundled" and net.feature_dim == 1280 and net.input_size == 224
    img = _centre_crop(_grace_hopper(), 224)
    x = net.preprocess(torch.from_numpy(img)[None])
    with torch.inference_mode():
        probs = net.logits(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] == 652, top5
    assert {834, 906, 457} & set(top5), top5
    assert probs[652] > 0.2


def test_lite0_other_input_sizes():
    net = build_backbone("efficientnet_lite0")
    img = _centre_crop(_grace_hopper(), 160)
    x = net.preprocess(torch.from_numpy(np.stack([img, img[:, ::-1].copy()])))
    with torch.inference_mode():
        feats = net(x)
        top5 = net.logits(x[:1]).topk(5).indices[0].tolist()
        small = net(torch.zeros(3, 3, 128, 128))
    assert feats.shape == (2, 1280) and small.shape == (3, 1280)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # ReLU6 trunk, average pooled
    assert {652, 834} & set(top5), top5


def test_preprocess():
    lite = build_backbone("efficientnet_lite0")
    frames = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 4, 4, 3).contiguous()
    x = lite.preprocess(frames)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    assert torch.equal(x[0], torch.full((3, 4, 4), -1.0)) and torch.equal(x[1], torch.full((3, 4, 4), 1.0))

    class Plain(Backbone):  # ImageNet mean/std, as vgg16_fc7 and resnet50_pool use
        name = "plain"

    y = Plain().preprocess(frames)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(y[1, :, 0, 0], (1 - mean) / std)
    torch.testing.assert_close(y[0, :, 0, 0], -mean / std)
    with pytest.raises(ValueError, match="uint8"):
        lite.preprocess(frames.float())
