"""The backbone on ONNX Runtime: the fast CPU path of frame-feature extraction.

On a CPU, ONNX Runtime runs EfficientNet-Lite0 about 2-3x faster than eager torch (measured in
``benchmarks/bench_extract.py``; torch stays the GPU path). The graph is exported from the very
torch module the extractor would run -- the bundled or user-supplied weights, preprocessing
included, so it takes the ``(N, S, S, 3)`` uint8 frames as they come from the decoder -- and cached
on disk, keyed by a hash of the weights, the backbone, the crop size and the torch version. The
first extractor of a kind pays the export (about 10 s at 224 px on 2 cores); every later one, in
any process, loads the file.

Cache folder: ``$VHINDEX_CACHE_DIR/onnx`` (default ``~/.cache/vhindex/onnx``). Files are written to
a temporary name and renamed, so concurrent workers never read half a file.

Features equal torch's within float32 rounding (``tests/test_features_onnx.py`` checks real frames at
a stated tolerance); the extractor stores float16 by default, where the two agree to the last bit
for nearly every value.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxBackbone", "onnx_available", "onnx_cache_dir"]

#: bump when the exported graph changes (part of every cache key)
_EXPORT_VERSION = "1"
#: frames per ONNX Runtime call: larger batches thrash the CPU caches (measured at 224 px on 2 cores:
#: 69 frames/s at 25 or 64 frames per call, 29 at 256), so the extractor's batches are cut into these
RUN_CHUNK = 32


def onnx_available() -> bool:
    """True when ``onnxruntime`` and ``onnx`` (needed to export) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_cache_dir() -> Path:
    """Where exported graphs are kept (``$VHINDEX_CACHE_DIR/onnx``, default ``~/.cache/vhindex/onnx``)."""
    root = os.environ.get("VHINDEX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vhindex")
    return Path(root) / "onnx"


class _Preprocessed(nn.Module):
    """uint8 NHWC frames -> features: the backbone with its preprocessing, in one exportable graph."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.backbone._mean) / self.backbone._std
        return self.backbone(x)


def _weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class OnnxBackbone:
    """A backbone as an ONNX Runtime session over uint8 frames.

    Args:
        backbone: the torch :class:`~vhindex.features.backbones.Backbone` (its weights are exported).
        image_size: crop side ``S`` of the frames it will see (the graph is exported for it).
        threads: ONNX Runtime intra-op threads (None: its default, every core).
        cache_dir: where the exported graph is kept (default :func:`onnx_cache_dir`).

    Raises:
        ImportError: ``onnxruntime`` / ``onnx`` are not installed (``pip install 'vhindex[video]'``).
    """

    def __init__(self, backbone: nn.Module, image_size: int, *, threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        import onnxruntime as ort

        self.image_size = int(image_size)
        key = hashlib.sha256("|".join([_EXPORT_VERSION, str(getattr(backbone, "name", type(backbone).__name__)),
                                       _weights_digest(backbone), str(self.image_size),
                                       torch.__version__]).encode()).hexdigest()[:20]
        folder = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
        self.path = folder / f"{getattr(backbone, 'name', 'backbone')}-{self.image_size}px-{key}.onnx"
        if not self.path.exists():
            self._export(backbone, folder)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _export(self, backbone: nn.Module, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        wrapper = _Preprocessed(backbone).eval().to("cpu")
        example = torch.zeros((2, self.image_size, self.image_size, 3), dtype=torch.uint8)
        fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=folder)
        os.close(fd)
        try:
            with warnings.catch_warnings():
                # the TorchScript exporter is the one that needs no extra packages; its deprecation
                # notice is not for our users
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (example,), tmp, dynamo=False, input_names=["frames"],
                                  output_names=["features"], opset_version=17,
                                  dynamic_axes={"frames": {0: "n"}, "features": {0: "n"}})
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` uint8 -> ``(N, D)`` float32 features."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected (N, {self.image_size}, {self.image_size}, 3) uint8 frames, got "
                             f"{tuple(frames.shape)} {frames.dtype}")
        parts = [self.session.run(None, {self.input_name: np.ascontiguousarray(frames[i:i + RUN_CHUNK])})[0]
                 for i in range(0, len(frames), RUN_CHUNK)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
