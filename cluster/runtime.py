"""Joining Ray from vhindex's jobs, services and tests: one connection rule, free local ports.

Shared by :mod:`cluster.train` (Ray Train), :mod:`cluster.data` (Ray Data) and
:mod:`cluster.serve` (Ray Serve); Ray itself is imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

__all__ = ["LOOPBACK", "connect_ray", "free_ports", "loopback_ray_env"]

#: the only address a local Ray started by vhindex listens on and advertises
LOOPBACK = "127.0.0.1"

logger = logging.getLogger(__name__)


def connect_ray(num_cpus: int | None = None, env: dict[str, str] | None = None) -> bool:
    """Connect to Ray: reuse a connection, else ``$RAY_ADDRESS`` (``ray job submit``), else a local Ray.

    The local Ray (``address="local"``) is a loopback-only cluster: node address 127.0.0.1 (see
    :func:`loopback_ray_env` for why that takes more than ``_node_ip_address``), free ports, a dashboard
    on 127.0.0.1 (Ray Train's state-API checks need it) and ``RAY_ADDRESS`` in its workers' environment.
    So Serve's advertised replica addresses, the shard data plane and the direct ingress all agree on
    127.0.0.1, and nothing of a local run listens on, or sends to, another interface.

    Args:
        num_cpus: CPUs of a local Ray (None: Ray's default, all cores).
        env: environment variables for every process of a local Ray (raylet, Serve controller, replicas),
            e.g. :func:`cluster.serve.serve_cluster_env`. Ignored when joining a running cluster, whose
            processes already have their environment (a warning names what is missing).

    Returns:
        True when this call started a local Ray (the caller should ``ray.shutdown()`` it).

    Raises:
        RuntimeError: the local Ray came up on another node address than 127.0.0.1 (it is shut down).
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=True)
        logger.info("connected to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        if env:
            logger.warning("joined a running Ray cluster: its processes keep their environment; start it with %s "
                           "for the settings asked here", " ".join(f"{k}={v}" for k, v in sorted(env.items())))
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    gcs_port, dashboard_port = free_ports(2)
    address = f"{LOOPBACK}:{gcs_port}"
    # Set only while the local Ray starts: its raylet (and so every worker it spawns) inherits them; this
    # process and later clusters do not keep them.
    scoped = {"RAY_GCS_SERVER_PORT": str(gcs_port), **loopback_ray_env(), **(env or {})}
    saved = {k: os.environ.get(k) for k in scoped}
    os.environ.update(scoped)
    try:
        with _loopback_constant():
            # Ray-internal actors (Ray Train's PlacementGroupCleaner queries the state API) resolve "the"
            # cluster from RAY_ADDRESS, else by auto-detection -- ambiguous or wrong when other Ray clusters
            # run on the machine. The dashboard (127.0.0.1, free port) serves that state API.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK,
                     dashboard_port=dashboard_port, _node_ip_address=LOOPBACK,
                     runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"the local Ray started on node address {node_ip}, not {LOOPBACK}: nothing of a local run "
                           "may listen on another interface (see cluster.runtime.loopback_ray_env)")
    logger.info("started a local Ray at %s (%s CPUs)", ray.get_runtime_context().gcs_address,
                ray.cluster_resources().get("CPU"))
    return True


def loopback_ray_env() -> dict[str, str]:
    """Environment for a Ray process (``ray start``, a job driver) that must stay on 127.0.0.1.

    Ray 2.60 reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray._private.ray_constants`` is
    imported. Unset (the Linux default), ``ray.init(_node_ip_address="127.0.0.1")`` and
    ``ray start --node-ip-address=127.0.0.1`` are both rewritten to the machine's routable address
    (``services.resolve_ip_for_localhost``); with it ``0``, loopback is kept. Pass
    ``--node-ip-address=127.0.0.1`` as well, so the address is named, not inferred.
    """
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextlib.contextmanager
def _loopback_constant() -> Iterator[None]:
    """While Ray starts: the switch Ray computed from :func:`loopback_ray_env` when it was imported.

    A test runner or a user's script may have imported ``ray`` before the variable was set; the module
    constant then still says "rewrite 127.0.0.1 to the network address" (issue 14). It is private, but
    the one switch Ray 2.60 consults (``services.get_node_ip_address``); restored afterwards, when this
    process's node address comes from the started node instead.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (all sockets held open while picking)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
