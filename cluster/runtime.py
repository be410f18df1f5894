"""Joining Ray from vhindex's jobs, services and tests: one connection rule, free local ports.

Shared by :mod:`cluster.train` (Ray Train), :mod:`cluster.pipelines` (Ray Data) and
:mod:`cluster.serve` (Ray Serve); Ray itself is imported lazily.
"""

from __future__ import annotations

import logging
import os

__all__ = ["connect_ray", "free_ports"]

logger = logging.getLogger(__name__)


def connect_ray(num_cpus: int | None = None, env: dict[str, str] | None = None) -> bool:
    """Connect to Ray: reuse a connection, else ``$RAY_ADDRESS`` (``ray job submit``), else a local Ray.

    The local Ray (``address="local"``) binds 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    unless set otherwise), on free ports, with a dashboard on 127.0.0.1 (Ray Train's state-API
    checks need it) and ``RAY_ADDRESS`` in its workers' environment.

    Args:
        num_cpus: CPUs of a local Ray (None: Ray's default, all cores).
        env: environment variables for every process of a local Ray (raylet, Serve controller, replicas),
            e.g. :func:`cluster.serve.serve_cluster_env`. Ignored when joining a running cluster, whose
            processes already have their environment (a warning names what is missing).

    Returns:
        True when this call started a local Ray (the caller should ``ray.shutdown()`` it).
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
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    gcs_port, dashboard_port = free_ports(2)
    address = f"127.0.0.1:{gcs_port}"
    # Set only while the local Ray starts: its raylet (and so every worker it spawns) inherits them; this
    # process and later clusters do not keep them.
    scoped = {"RAY_GCS_SERVER_PORT": str(gcs_port), **(env or {})}  # the port lets us name the address
    saved = {k: os.environ.get(k) for k in scoped}
    os.environ.update(scoped)
    try:
        # Ray-internal actors (Ray Train's PlacementGroupCleaner queries the state API) resolve "the"
        # cluster from RAY_ADDRESS, else by auto-detection -- ambiguous or wrong when other Ray clusters
        # run on the machine. The dashboard (127.0.0.1, free port) serves that state API.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=dashboard_port, runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    logger.info("started a local Ray at %s (%s CPUs)", ray.get_runtime_context().gcs_address,
                ray.cluster_resources().get("CPU"))
    return True


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
