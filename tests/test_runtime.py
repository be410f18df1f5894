"""A local Ray started by vhindex stays on loopback (issue 14), and advertised addresses are reconciled.

Oracle: the listening sockets the kernel reports (psutil) for the processes of a real local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.serve import reachable_host

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1"}

# `ray` is imported *before* connect_ray, with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER unset: the case where
# Ray's import-time switch used to rewrite 127.0.0.1 to the machine's network address.
_PROBE = r"""
import json, psutil, ray
from cluster.runtime import connect_ray
started = connect_ray(num_cpus=1)

@ray.remote
def worker_ip():
    return ray.util.get_node_ip_address()

me = psutil.Process()
pids = {p.pid for p in me.children(recursive=True)}
listening = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in psutil.net_connections("tcp")
             if c.status == psutil.CONN_LISTEN and c.pid in pids]
print("RESULT " + json.dumps({"started": started, "driver": ray.util.get_node_ip_address(),
                              "worker": ray.get(worker_ip.remote()),
                              "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
                              "gcs": ray.get_runtime_context().gcs_address, "listening": listening}))
ray.shutdown()
"""


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
def test_local_ray_runs_on_loopback_even_when_ray_was_imported_first(tmp_path):
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads(line[0][len("RESULT "):])
    assert got["started"] is True
    assert got["driver"] == got["worker"] == "127.0.0.1"
    assert got["nodes"] == ["127.0.0.1"]
    assert got["gcs"].startswith("127.0.0.1:")
    # GCS, raylet, dashboard, agents, workers: nothing listens on another interface
    assert len(got["listening"]) >= 3, got["listening"]
    assert all(ip in LOOPBACK_IPS for ip, _, _ in got["listening"]), got["listening"]
    # the switch is scoped to the start: this process's environment is as it was
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in env


def test_reachable_host_reconciles_the_advertised_and_the_bound_address():
    # bound to every interface: the advertised node address works
    assert reachable_host("198.51.100.7", "0.0.0.0") == "198.51.100.7"
    assert reachable_host("198.51.100.7", "::") == "198.51.100.7"
    # bound to loopback, replica on this machine (advertised at any of our addresses): loopback
    assert reachable_host("127.0.0.1", "127.0.0.1") == "127.0.0.1"
    assert reachable_host("127.0.0.2", "127.0.0.1") == "127.0.0.1"
    assert reachable_host("127.0.0.1", "localhost") == "127.0.0.1"
    # bound to loopback on another machine (198.51.100.0/24 is TEST-NET-2, never ours): unreachable
    assert reachable_host("198.51.100.7", "127.0.0.1") is None
    # bound to a specific address that is the advertised one: that address
    assert reachable_host("198.51.100.7", "198.51.100.7") == "198.51.100.7"
