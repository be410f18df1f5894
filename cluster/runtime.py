"""Joining Ray from vhindex's jobs, services and tests: one connection rule, free local ports.

Shared by :mod:`cluster.train` (Ray Train), :mod:`cluster.pipelines` (Ray Data) and
:mod:`cluster.serve` (Ray Serve); Ray itself is imported lazily.
"""

from __future__ import annotations

import logging
import os

__all__ = ["connect_ray", "free_ports"]

logger = logging.getLogger(__name__)


def connect_ray(num_cpus: int | None = None) -> bool:
    """Connect to Ray: reuse a connection, else ``$RAY_ADDRESS`` (``ray job submit``), else a local Ray.

    The local Ray (``address="local"``) binds 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    unless set otherwise), on free ports, with a dashboard on 127.0.0.1 (Ray Train's state-API
    checks need it) and ``RAY_ADDRESS`` in its workers' environment.

    Args:
        num_cpus: CPUs of a local Ray (None: Ray's default, all cores).

    Returns:
        True when this call started a local Ray (the caller should ``ray.shutdown()`` it).
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=True)
        logger.info("connected to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        return False
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    gcs_port, dashboard_port = free_ports(2)
    address = f"127.0.0.1:{gcs_port}"
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)  # read by a local ray.init; lets us name the address
    try:
        # Ray-internal actors (Ray Train's PlacementGroupCleaner queries the state API) resolve "the"
        # cluster from RAY_ADDRESS, else by auto-detection -- ambiguous or wrong when other Ray clusters
        # run on the machine. The dashboard (127.0.0.1, free port) serves that state API.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=dashboard_port, runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved
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
