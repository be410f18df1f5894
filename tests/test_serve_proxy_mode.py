# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""The query service on a Ray started *without* ``serve.fast_path``'s environment (classic Serve).

Every request then goes through Serve's HTTP proxy and deployments talk Ray actor calls. Answers
must still equal brute force; a service asking for the fast path on such a cluster must say so (a
warning) and report no router ports instead of waiting for them.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from test_serve import _as_arrays, _build, _codes, _deploy, _oracle, _settings

from vhindex.index.codes import code_to_hex
from vhindex.index.testing import assert_same_knn

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray")]


@pytest.fixture(scope="module")
def classic_serve(private_ray):
    import ray
    from ray import serve

    from cluster.runtime import connect_ray, free_ports

    port, direct_port = free_ports(2)
    started = connect_ray(num_cpus=4)  # no serve_cluster_env: Serve's defaults
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port, direct_port
    serve.shutdown()
    if started:
        ray.shutdown()


def test_classic_serve_answers_equal_brute_force_and_fast_path_is_reported_missing(classic_serve, tmp_path, caplog):
    from cluster.serve import direct_endpoints

    ids, codes = _codes(2000, seed=4)
    index = _build(tmp_path, "idx", ids, codes, 2)
    with caplog.at_level(logging.WARNING, logger="cluster.serve"):
        base = _deploy(_settings(index, classic_serve, fast_path=True), via="proxy")
    assert any("runs Serve without it" in r.getMessage() for r in caplog.records), caplog.text
    assert direct_endpoints("t", timeout_s=5) == []
    from cluster.serve import service_url

    assert service_url(_settings(index, classic_serve)) == base  # falls back to Serve's proxy
    rng = np.random.default_rng(9)
    queries = codes[rng.integers(0, len(codes), size=30)] ^ rng.integers(0, 2, size=(30, 8), dtype=np.uint8)
    D_ref, I_ref = _oracle(ids, codes, queries)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda q: requests.post(base + "/search", json={"code": code_to_hex(q), "k": 12},
                                                        timeout=30), queries))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies][:2]
    D, I = _as_arrays([r.json()["results"] for r in replies], 12)
    assert_same_knn(D, I, D_ref, I_ref)
    # fast_path off: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cluster.serve"):
        _deploy(_settings(index, classic_serve, fast_path=False), via="proxy")
    assert not any("runs Serve without it" in r.getMessage() for r in caplog.records)
