"""Frame-level copy search served over HTTP (``level: "frame"``) against the single FrameLevelIndex.

Oracle: one :class:`FrameLevelIndex` over every frame code (itself tested against a literal Algorithm 1),
and :func:`vhindex.index.frame_shards.align_with` for the segments. Real parts: a local Ray, Serve's HTTP
proxy, one deployment per frame shard, a sharded frame index built by ``build_sharded_frame_index``.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from serve_helpers import wait_healthy  # tests/ is on sys.path (pytest rootdir conftest)

from vhindex.data.schema import CodesDatasetMeta
from vhindex.data.writer import CodesDatasetWriter
from vhindex.index.codes import code_to_hex

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray")]


def test_frame_level_answers_equal_the_single_index(ray_serve, tmp_path):
    from cluster.serve import deploy
    from vhindex.config import ServeSection
    from vhindex.data import FrameDatasetMeta, FrameDatasetWriter
    from vhindex.index.frame_shards import align_with, build_sharded_frame_index
    from vhindex.index.frames import FrameLevelIndex
    from vhindex.index.sharded import IndexSpec, build_sharded_index
    from vhindex.models import build_model, load_model

    rng = np.random.default_rng(4)
    n, m, d = 90, 8, 16
    feats = rng.standard_normal((n, m, d)).astype(np.float32)
    feats[60:70] = feats[0:10] + 0.02 * rng.standard_normal((10, m, d)).astype(np.float32)  # near copies
    feats[70:80, 2:6] = feats[10:20, 0:4]  # copies of a part, later in the video
    ids = [f"f{i:03d}" for i in range(n)]
    with FrameDatasetWriter(str(tmp_path / "frames"), FrameDatasetMeta(num_frames=m, feature_dim=d, dtype="float32"),
                            row_group_size=10) as w:
        w.write(ids, feats)
    fmodel = build_model("itq", 8)  # 8-bit frame codes: ties everywhere
    fmodel.fit(lambda: iter([feats.reshape(-1, 1, d)]), seed=0)
    fmodel.save(str(tmp_path / "frame-model"))
    build_sharded_frame_index(str(tmp_path / "frames"), str(tmp_path / "frame-model"), str(tmp_path / "fidx"), 3)
    fcodes = load_model(str(tmp_path / "frame-model")).encode_packed(feats.reshape(-1, 1, d)).reshape(n, m, -1)
    single = FrameLevelIndex(8)
    single.add(ids, fcodes)
    # the video-level index the service also needs
    vmodel = build_model("itq", 16)
    vmodel.fit(lambda: iter([feats]), seed=0)
    with CodesDatasetWriter(str(tmp_path / "codes"), CodesDatasetMeta(bits=16, model="itq",
                                                                     model_version=vmodel.version()),
                            row_group_size=30) as w:
        w.write(ids, vmodel.encode_packed(feats))
    build_sharded_index(str(tmp_path / "codes"), str(tmp_path / "vidx"), 2, spec=IndexSpec("flat", {}))
    settings = ServeSection.model_validate(dict(
        index=str(tmp_path / "vidx"), frame_index=str(tmp_path / "fidx"), port=ray_serve[0], direct_port=ray_serve[1],
        shard_cpus=0.1, router_cpus=0.1, app_name="fr", route_prefix="/", frame_top_n=40))
    deploy(settings)
    base = wait_healthy(f"http://127.0.0.1:{settings.port}")
    info = requests.get(base + "/info", timeout=10).json()
    assert info["frame_index"]["shards"] == 3 and info["frame_index"]["frames"] == n * m

    def check(body: dict, want_ids: list[str], want_scores: np.ndarray) -> None:
        assert [r["video_id"] for r in body["results"]] == want_ids
        assert [r["score"] for r in body["results"]] == want_scores.tolist()  # exact floats

    for qi in (0, 10, 33, 65, 75):
        for top_n, k, excl in ((40, 10, False), (5, 90, True), (1, 3, False)):
            r = requests.post(base + "/search", json={"video_id": ids[qi], "level": "frame", "k": k, "top_n": top_n,
                                                      "exclude_self": excl}, timeout=60)
            assert r.status_code == 200, r.text
            want_ids, want_scores = single.search(fcodes[qi], k, top_n=top_n, exclude=ids[qi] if excl else None)
            check(r.json(), want_ids, want_scores)
    # by frame codes with times: the copy of a part is found with its segment in seconds
    q = fcodes[75]
    times = (np.arange(m) + 0.5) * 2.0
    r = requests.post(base + "/search", json={"frame_codes": [code_to_hex(c) for c in q], "frame_times": times.tolist(),
                                              "level": "frame", "k": 5}, timeout=60).json()
    want_ids, want_scores = single.search(q, 5, top_n=40)
    check(r, want_ids, want_scores)
    for res in r["results"]:
        want = [g.as_dict() for g in align_with(single, q, times, res["video_id"])] if res["score"] > 0 else []
        assert res["segments"] == want
    assert any(res["segments"] for res in r["results"])  # the oracle's segments are not all empty
    # bad requests
    for body, status, text in [
        ({"code": "00ff", "level": "frame"}, 422, "level 'frame' searches by"),
        ({"frame_codes": ["00"], "k": 3}, 422, "need level 'frame'"),
        ({"frame_codes": ["zz"], "level": "frame"}, 400, "frame_codes"),
        ({"frame_codes": ["00", "01"], "frame_times": [1.0], "level": "frame"}, 422, "one time per frame code"),
        ({"video_id": "nope", "level": "frame"}, 404, "not in the frame index"),
    ]:
        reply = requests.post(base + "/search", json=body, timeout=30)
        assert reply.status_code == status and text in reply.json()["error"], (body, reply.status_code, reply.text)
