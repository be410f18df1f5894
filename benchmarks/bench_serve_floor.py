"""Benchmark: the floor of Ray Serve itself on this machine -- no-op apps, the same HTTP clients as bench_serve.

What one HTTP query costs before any index work, for the hop structures a service can have:

* ``ingress``: a FastAPI ingress deployment that answers at once (HTTP proxy -> 1 replica);
* ``ingress+1``: the ingress awaits one no-op downstream deployment (a DeploymentHandle call);
* ``ingress+4``: the ingress fans out to 4 no-op deployments with ``asyncio.gather`` -- the hop
  structure of the vhindex service with 4 shards, with zero search work.

For each: single-query latency (``--single`` sequential POSTs on one keep-alive connection, as
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
    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, logging_config={"enable_access_log": False})
    class Leaf:
        async def __call__(self, payload: bytes) -> int:
            return len(payload)

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, logging_config={"enable_access_log": False})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, *leaves) -> None:  # noqa: ANN002
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
    args = p.parse_args(argv)

    import requests
    from ray import serve

    from cluster.runtime import connect_ray, free_ports

    started = connect_ray()
    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    payload = b'{"code": "0123456789abcdef", "k": 10}'
    lines = []
    try:
        for fanout in args.fanouts:
            name = "ingress" if fanout == 0 else f"ingress+{fanout}"
            serve.run(_apps(fanout), name="floor", route_prefix="/")
            session = requests.Session()
            while session.get(base + "/healthz", timeout=30).status_code != 200:
                time.sleep(0.2)
            for _ in range(100):
                session.post(base + "/search", data=payload, headers={"Content-Type": "application/json"})
            lat = []
            for _ in range(args.single):
                t0 = time.perf_counter()
                r = session.post(base + "/search", data=payload, headers={"Content-Type": "application/json"})
                lat.append(1000 * (time.perf_counter() - t0))
                assert r.status_code == 200, r.text
            done, lat_load, errors = asyncio.run(_load(base, [payload], args.concurrency, args.seconds))
            line = (f"{name:<10s} single p50 {_pct(lat, 50):6.2f} ms  p99 {_pct(lat, 99):6.2f} ms | concurrency "
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
