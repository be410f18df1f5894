"""A multi-node Ray cluster on one machine, every node on 127.0.0.1, each node killable as a whole.

:class:`RayCluster` is a private head (:class:`tests.ray_head.RayHead`, ``ray start --head``) plus worker
nodes. Each worker node is its own raylet with its own resources and object store -- a node of the
cluster like a machine's, which the scheduler, Serve and Ray Train see as separate.

Why not ``ray start --address`` for the workers: Ray 2.60's CLI refuses to join a node when
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the one switch that keeps Ray on loopback, see
:func:`cluster.runtime.loopback_ray_env`), and with the switch on it rewrites ``127.0.0.1`` to the
machine's network address. So a worker node is started the way the CLI starts one (and as
``ray.cluster_utils.Cluster`` does in-process): ``ray._private.node.Node(head=False)`` with the node
address named, in a launcher process of its own (``python tests/ray_cluster.py --join ...``).

Each launcher runs in a new session, so the node -- raylet, agents, log monitor and every worker
process the raylet spawns -- is one process group. :meth:`RayCluster.kill_node` SIGKILLs that group:
the whole-node loss of a preempted or OOM-killed machine, with no graceful drain. Nothing here stops
processes by name, so other Ray clusters on the machine are never touched.

Usage::

    with RayCluster.start(head_cpus=1) as rc:
        a = rc.add_node(num_cpus=1, resources={"node_a": 1})
        rc.connect()                      # ray.init(address=...) in this process
        ...
        rc.kill_node(a)                   # whole-node loss
        rc.wait_nodes(alive=2)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if __package__ in (None, ""):  # run as a script (the worker-node launcher): make `tests`/`cluster` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.runtime import LOOPBACK, free_ports  # noqa: E402
from tests.ray_head import RayHead, ray_env  # noqa: E402

__all__ = ["FAST_NODE_DEATH", "RayCluster", "WorkerNode", "ray_cluster"]

_READY = "VHINDEX-NODE-READY"

#: The GCS declares a node dead after ``health_check_failure_threshold`` missed health checks, one every
#: ``health_check_period_ms``: Ray's defaults (3000 ms x 5) take ~15 s; these ~3 s (tests wait less; the
#: recovery-time benchmark reports both).
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@dataclass
class WorkerNode:
    """A worker node of a :class:`RayCluster`: its launcher process (the group leader) and Ray node id."""

    name: str
    proc: subprocess.Popen
    node_id: str
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def pgid(self) -> int:
        return self.proc.pid


class RayCluster:
    """A head plus worker nodes on 127.0.0.1 (see the module docstring)."""

    def __init__(self, head: RayHead) -> None:
        self.head = head
        self.nodes: dict[str, WorkerNode] = {}
        self._connected = False

    @classmethod
    def start(cls, head_cpus: int = 1, *, head_resources: dict[str, float] | None = None,
              object_store_mb: int = 200, system_config: dict[str, object] | None = None) -> RayCluster:
        """Start the head (``head_cpus`` CPUs, custom ``head_resources``), no worker nodes yet.

        ``system_config``: Ray internal settings for the whole cluster (``ray start --system-config``),
        e.g. :data:`FAST_NODE_DEATH` so that a killed node is declared dead in ~3 s instead of ~15 s.
        """
        extra = [f"--resources={json.dumps(head_resources)}"] if head_resources else []
        if system_config:
            extra.append(f"--system-config={json.dumps(system_config)}")
        return cls(RayHead.start(num_cpus=head_cpus, object_store_mb=object_store_mb, extra_args=extra))

    @property
    def address(self) -> str:
        return self.head.address

    # ------------------------------------------------------------------ nodes

    def add_node(self, name: str, *, num_cpus: int = 1, resources: dict[str, float] | None = None,
                 object_store_mb: int = 150, timeout: float = 90.0) -> WorkerNode:
        """Start a worker node named ``name`` that advertises ``num_cpus`` CPUs and ``{name: 1, **resources}``.

        The custom resource named after the node lets a test pin work to it (``resources={name: 0.01}``).

        Raises:
            RuntimeError: the node did not report ready within ``timeout`` seconds (its log is quoted).
        """
        if name in self.nodes:
            raise ValueError(f"a node named {name!r} exists already")
        res = {name: 1.0, **(resources or {})}
        log_path = Path(self.head.temp_dir) / f"node-{name}.launcher.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--join", self.address, "--num-cpus", str(num_cpus),
               "--resources", json.dumps(res), "--object-store-mb", str(object_store_mb),
               "--temp-dir", self.head.temp_dir]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=ray_env({"RAY_ADDRESS": self.address}), stdout=subprocess.PIPE,
                                    stderr=log, text=True, start_new_session=True)
        node_id = _read_ready(proc, timeout)
        if node_id is None:
            _kill_group(proc)
            raise RuntimeError(f"worker node {name!r} did not start within {timeout}s:\n{log_path.read_text()[-3000:]}")
        node = WorkerNode(name, proc, node_id, res)
        self.nodes[name] = node
        self.head._remember()
        return node

    def kill_node(self, node: WorkerNode | str) -> None:
        """Whole-node loss: SIGKILL the node's process group (raylet, agents, every worker on it)."""
        node = self.nodes[node] if isinstance(node, str) else node
        _kill_group(node.proc)

    def stop_node(self, node: WorkerNode | str, timeout: float = 20.0) -> None:
        """Graceful removal: SIGTERM the launcher, which shuts the node down (then the group is killed)."""
        node = self.nodes[node] if isinstance(node, str) else node
        with contextlib.suppress(ProcessLookupError):
            node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(node.proc)

    def alive_node_ids(self) -> set[str]:
        """Node ids the GCS reports alive (needs :meth:`connect`)."""
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def wait_nodes(self, alive: int, timeout: float = 60.0) -> float:
        """Wait until the GCS reports exactly ``alive`` live nodes; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if len(self.alive_node_ids()) == alive:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise TimeoutError(f"{len(self.alive_node_ids())} nodes alive after {timeout}s, expected {alive}")

    # ------------------------------------------------------------------ driver

    def connect(self, **init_kwargs) -> None:
        """``ray.init`` this process into the cluster (loopback kept; see :mod:`cluster.runtime`)."""
        import ray

        from cluster.runtime import _loopback_constant

        with _loopback_constant():
            ray.init(address=self.address, **init_kwargs)
        self._connected = True

    def stop(self) -> None:
        """Disconnect, kill every worker node's group and stop the head by PID."""
        import ray

        if self._connected and ray.is_initialized():
            ray.shutdown()
        self._connected = False
        for node in self.nodes.values():
            _kill_group(node.proc)
        self.head.stop()

    def pids(self) -> set[int]:
        """Live processes of the cluster (the head's, and every worker node's group)."""
        import psutil

        found = set(self.head.pids())
        for node in self.nodes.values():
            for proc in _node_processes(node.proc):
                with contextlib.suppress(psutil.Error):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found.add(proc.pid)
        return found

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_ready(proc: subprocess.Popen, timeout: float) -> str | None:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if line.startswith(_READY):
                return line.split()[1]
    return None


def _node_processes(proc: subprocess.Popen) -> list:
    """Every live process of a worker node: its launcher's process group and the launcher's descendants
    (the raylet may start workers in process groups of their own)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            found[child.pid] = child
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == proc.pid:
                found[p.pid] = p
    return [p for p in found.values() if p.pid != os.getpid()]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole node at once (no process gets to react to another's death first)."""
    import psutil

    members = _node_processes(proc)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in members:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(members, timeout=5)  # SIGKILL is asynchronous: return once they are gone
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@pytest.fixture(scope="module")
def ray_cluster(private_ray) -> Iterator[RayCluster]:
    """A private multi-node cluster for the module: head with 1 CPU, no worker nodes (tests add them).

    Afterwards asserts that no process of the cluster survived.
    """
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    rc = RayCluster.start(head_cpus=1)
    try:
        yield rc
    finally:
        rc.stop()
    left = rc.pids()
    assert not left, f"processes of the test cluster survived stop(): {sorted(left)}"


# ---------------------------------------------------------------------- worker-node launcher

def _join(argv: list[str]) -> None:
    """Start one worker node joined to ``--join`` on 127.0.0.1 and keep it until SIGTERM / SIGKILL."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--join", required=True)
    p.add_argument("--num-cpus", type=int, default=1)
    p.add_argument("--resources", default="{}")
    p.add_argument("--object-store-mb", type=int, default=150)
    p.add_argument("--temp-dir", required=True)
    args = p.parse_args(argv)
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"})
    import ray._private.node
    import ray._private.parameter

    ports = free_ports(7)
    params = ray._private.parameter.RayParams(
        node_ip_address=LOOPBACK, gcs_address=args.join, num_cpus=args.num_cpus, num_gpus=0,
        resources=json.loads(args.resources), object_store_memory=args.object_store_mb * 1024 * 1024,
        node_manager_port=ports[0], object_manager_port=ports[1], metrics_export_port=ports[2],
        dashboard_agent_listen_port=ports[3], metrics_agent_port=ports[4], runtime_env_agent_port=ports[5],
        ray_client_server_port=ports[6], temp_dir=args.temp_dir, include_log_monitor=True)
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=False)

    def _graceful(*_: object) -> None:
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, _graceful)
    print(_READY, node.node_id, flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    _join(sys.argv[1:])
