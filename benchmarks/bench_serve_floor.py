"""Benchmark: the floor of Ray Serve itself on this machine -- no-op apps, the same HTTP clients as bench_serve.

What one HTTP query costs before any index work, for the hop structures a service can have:

* ``ingress``: a FastAPI ingress deployment that answers at once (HTTP proxy -> 1 replica);
* ``ingress+1``: the ingress awaits one no-op downstream deployment (a DeploymentHandle call);
* ``ingress+4``: the ingress fans out to 4 no-op deployments with ``asyncio.gather`` -- the hop
  structure of the vhindex service with 4 shards, with zero search work.

Each is measured through the ingress replica's own port (direct ingress, as ``serve.fast_path`` runs the
service; ``--fast-path on``, the default) and through Serve's HTTP proxy. For each: single-query latency (``--single`` sequential POSTs on one keep-alive connection, as
``bench_serve.py``) and throughput at concurrency ``--concurrency`` for ``--seconds`` (asyncio
aiohttp client, as ``bench_serve.py``). The client shares the machine with Ray. Usage::

    python benchmarks/bench_serve_floor.py
"""

# No `from __future__ import annotations`: FastAPI must resolve `Request` in the endpoint signatures.

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import _load, _pct  # noqa: E402


def _apps(fanout: int):  # noqa: ANN202
    import asyncio as aio

    from fastapi import FastAPI, Request
    from ray import serve

    # access logs off, as in the vhindex service (serve.access_log: false)
    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, logging_config={"enable_access_log": False},
                      max_ongoing_requests=256)
    class Leaf:
        async def __call__(self, payload: bytes) -> int:
            return len(payload)

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, logging_config={"enable_access_log": False},
                      max_ongoing_requests=256)
    @serve.ingress(app)
    class Ingress:
        def __init__(self, *leaves) -> None:  # noqa: ANN002
            from ray.serve._private import constants as serve_constants

            if serve_constants.RAY_SERVE_USE_GRPC_BY_DEFAULT:  # as cluster.serve.Router: gRPC handles
                leaves = tuple(h.options(_by_reference=False) for h in leaves)
            self.leaves = leaves

        @app.post("/search")
        async def search(self, request: Request) -> dict:
            body = await request.body()
            if self.leaves:
                sizes = await aio.gather(*[leaf.remote(body) for leaf in self.leaves])
                return {"results": [], "sizes": list(sizes)}
            return {"results": [], "size": len(body)}

        @app.get("/healthz")
        async def healthz(self) -> dict:
            return {"ok": True}

    leaves = [Leaf.options(name=f"leaf{i}").bind() for i in range(fanout)]
    return Ingress.bind(*leaves)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--single", type=int, default=1_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fanouts", type=int, nargs="+", default=[0, 1, 4])
    p.add_argument("--fast-path", choices=["on", "off"], default="on",
                   help="start Ray as serve.fast_path does (throughput-optimized Serve; measure the ingress "
                        "replica's own port and the proxy)")
    args = p.parse_args(argv)

    import requests
    from ray import serve

    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import direct_endpoints, serve_cluster_env
    from vhindex.config import ServeSection

    port, direct_port = free_ports(2)
    fast = ServeSection(direct_port=direct_port, direct_drain_s=0.5, fast_path=args.fast_path == "on")
    started = connect_ray(env=serve_cluster_env(fast))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    proxy = f"http://127.0.0.1:{port}"
    payload = b'{"code": "0123456789abcdef", "k": 10}'
    lines = []
    try:
        for fanout, via in [(f, v) for f in args.fanouts for v in (("direct", "proxy") if fast.fast_path else ("proxy",))]:
            name = ("ingress" if fanout == 0 else f"ingress+{fanout}") + f" via {via}"
            serve.run(_apps(fanout), name="floor", route_prefix="/")
            session = requests.Session()
            while session.get(proxy + "/healthz", timeout=30).status_code != 200:
                time.sleep(0.2)
            base = direct_endpoints("floor", ask_router=False)[0] if via == "direct" else proxy
            for _ in range(100):
                session.post(base + "/search", data=payload, headers={"Content-Type": "application/json"})
            lat = []
            for _ in range(args.single):
                t0 = time.perf_counter()
                r = session.post(base + "/search", data=payload, headers={"Content-Type": "application/json"})
                lat.append(1000 * (time.perf_counter() - t0))
                assert r.status_code == 200, r.text
            done, lat_load, errors = asyncio.run(_load(base, [payload], args.concurrency, args.seconds))
            line = (f"{name:<19s} single p50 {_pct(lat, 50):6.2f} ms  p99 {_pct(lat, 99):6.2f} ms | concurrency "
                    f"{args.concurrency}: {done / args.seconds:6.0f} q/s, p50 {_pct(lat_load, 50):6.2f} ms, "
                    f"p99 {_pct(lat_load, 99):6.2f} ms, {errors} errors")
            print(line, flush=True)
            lines.append(line)
            serve.delete("floor")
    finally:
        serve.shutdown()
        if started:
            import ray

            ray.shutdown()
    print("```")
    print(f"bench_serve_floor  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()} cpus={os.cpu_count()} python {platform.python_version()} "
          f"load={tuple(round(x, 2) for x in os.getloadavg())}; no-op Serve apps, client on the same machine")
    print("\n".join(lines))
    print("```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
