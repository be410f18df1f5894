"""vhindex vs Milvus Lite: exact Hamming top-k over the same binary codes, side by side.

Runs with the project venv::

    nice -n 5 .venv/bin/python benchmarks/bench_milvus.py                 # 700,000 x 64 bits, 1,000 queries
    .venv/bin/python benchmarks/bench_milvus.py --n 100000 --milvus-single 100 --report ''

Steps:

(a) creates the Milvus venv at ``--venv`` if it is missing (``python3 -m venv`` + one
    ``pip install "milvus-lite==2.5.1" "pymilvus<2.6" "setuptools<81" numpy``; milvus-lite 2.5 is
    the last with binary vectors, and it conflicts with the project's own dependencies, hence
    its own venv; the install is timed and printed);
(b) generates seeded clustered codes: ``--clusters`` random centre codes, every database code a
    centre with each bit flipped with probability ``--flip``; queries are random database codes
    with each bit flipped with probability ``--query-flip`` (so each query has close neighbours);
    both saved as packed uint8 ``.npy`` (msb0, as vhindex stores codes);
(c) times vhindex in-process, and (``--service-shards``, default 4) the vhindex HTTP service on the same
    codes (Ray Serve on a local Ray, product defaults; batch via ``/search/batch``, single via ``/search``): ``BinaryFlatIndex.add`` (700k string ids + codes), ``search`` of all
    queries as one batch with 1 and 2 faiss threads (best of ``--repeat``), and single-query calls;
(d) runs ``benchmarks/milvus_peer.py`` in the Milvus venv on the same ``.npy`` files (BIN_FLAT,
    HAMMING; inserts, flush, index, load; batched search in calls of ``--milvus-batch`` queries,
    best of ``--repeat``; ``--milvus-single`` single-query calls);
(e) checks the answers, tie-aware: per query, both engines' distance lists equal the exact
    top-k distances (numpy popcount oracle over all codes), every returned id really is at its
    returned distance, no id repeats in a row; ids may differ only within ties;
(f) prints a markdown report (and writes it to ``--report``): build time, batched qps,
    single-query p50/p99, vhindex / Milvus Lite throughput multiples, machine info and date.

The peer's milvus-lite server process is stopped by the peer on exit; afterwards this script
looks for any process still holding the peer's db path and stops it (by pid), so nothing is left
behind.
"""

# ruff: noqa: E741  -- D, I are faiss's names for (distances, ids); kept on purpose
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEER = REPO / "benchmarks" / "milvus_peer.py"
MILVUS_REQUIREMENTS = ["milvus-lite==2.5.1", "pymilvus<2.6", "setuptools<81", "numpy"]


# ----------------------------------------------------------------------------- (a) the Milvus venv


def ensure_milvus_venv(venv: Path) -> dict:
    """Create ``venv`` with the Milvus Lite requirements if it has no python; return what was done."""
    py = venv / "bin" / "python"
    if py.exists():
        return {"created": False, "python": str(py)}
    venv.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmd_venv = ["python3", "-m", "venv", str(venv)]
    print(f"$ {shlex.join(cmd_venv)}", flush=True)
    subprocess.run(cmd_venv, check=True)
    cmd_pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", *MILVUS_REQUIREMENTS]
    print(f"$ {shlex.join(cmd_pip)}", flush=True)
    subprocess.run(cmd_pip, check=True)
    secs = time.perf_counter() - t0
    print(f"Milvus venv ready at {venv} in {secs:.1f}s", flush=True)
    return {"created": True, "python": str(py), "install_s": secs}


def _check_ignored(path: Path) -> str | None:
    """A warning if ``path`` (inside the repo) is not git-ignored, else None."""
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        return None
    r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(rel)], capture_output=True)
    if r.returncode == 1:
        top = rel.parts[0]
        return f"{rel} is not git-ignored: add the line `{top}/` to .gitignore"
    return None


# ----------------------------------------------------------------------------- (b) data


def make_codes(n: int, bits: int, nq: int, clusters: int, flip: float, query_flip: float, seed: int):
    """Seeded clustered packed codes ``(n, bits/8)`` and queries near database codes ``(nq, bits/8)``."""
    rng = np.random.default_rng(seed)
    centres = rng.random((clusters, bits)) < 0.5
    codes = np.empty((n, bits // 8), dtype=np.uint8)
    block = 50_000
    for start in range(0, n, block):
        m = min(block, n - start)
        x = centres[rng.integers(0, clusters, m)] ^ (rng.random((m, bits)) < flip)
        codes[start : start + m] = np.packbits(x, axis=1, bitorder="big")
    src = rng.choice(n, size=nq, replace=False)
    q = np.unpackbits(codes[src], axis=1, bitorder="big").astype(bool) ^ (rng.random((nq, bits)) < query_flip)
    return codes, np.packbits(q, axis=1, bitorder="big")


# ----------------------------------------------------------------------------- (c) vhindex


def bench_vhindex(codes: np.ndarray, queries: np.ndarray, k: int, threads: list[int], repeat: int, single: int) -> dict:
    import faiss

    from vhindex.index import BinaryFlatIndex

    bits = codes.shape[1] * 8
    nq = queries.shape[0]
    ids = [f"v{i}" for i in range(codes.shape[0])]
    out: dict = {"faiss_version": faiss.__version__, "batch": {}, "single": {}}
    t0 = time.perf_counter()
    index = BinaryFlatIndex(bits, num_threads=1)
    index.add(ids, codes)
    out["build_s"] = time.perf_counter() - t0
    print(f"vhindex: add {codes.shape[0]:,} codes in {out['build_s']:.2f}s", flush=True)
    D = I = None
    for t in threads:
        index.num_threads = t
        index.search(queries[:1], k)  # warm-up
        walls = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            d, i = index.search(queries, k)
            walls.append(time.perf_counter() - t0)
        if D is None:
            D, I = d, i
        best = min(walls)
        out["batch"][t] = {"walls_s": walls, "search_s": best, "qps": nq / best, "D": d, "I": i}
        print(f"vhindex: batch of {nq} queries, {t} thread(s): {nq / best:,.0f} qps (best of {repeat})", flush=True)
    ns = min(single, nq)
    for t in threads:
        index.num_threads = t
        lat = np.empty(ns)
        sd = np.empty((ns, k), np.int32)
        si = np.empty((ns, k), np.int64)
        for j in range(ns):
            t0 = time.perf_counter()
            d, i = index.search(queries[j : j + 1], k)
            lat[j] = time.perf_counter() - t0
            sd[j], si[j] = d[0], i[0]
        lat *= 1e3
        out["single"][t] = {
            "n": ns,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean()),
            "D": sd,
            "I": si,
        }
        print(
            f"vhindex: {ns} single queries, {t} thread(s): p50 {out['single'][t]['p50_ms']:.3f} ms, "
            f"p99 {out['single'][t]['p99_ms']:.3f} ms",
            flush=True,
        )
    out["D"], out["I"] = D, I
    return out


def bench_service(codes: np.ndarray, queries: np.ndarray, k: int, shards: int, repeat: int, single: int,
                  work: Path) -> dict:
    """The vhindex HTTP service on the same codes: ``shards`` flat shards, Ray Serve on a local Ray with the
    product defaults (fast path: queries to the router replica's own port), client on this machine."""
    import json as _json

    import ray
    import requests
    from ray import serve

    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import deploy, serve_cluster_env, service_url
    from vhindex.config import ServeSection
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.index.codes import code_to_hex
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    bits, nq = codes.shape[1] * 8, queries.shape[0]
    codes_url, index_url = work / "service-codes", work / "service-index"
    for d in (codes_url, index_url):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    rg = max(1, min(10_000, codes.shape[0] // (4 * shards)))  # enough row groups for balanced shards
    with CodesDatasetWriter(str(codes_url), CodesDatasetMeta(bits=bits, model="bench"), rows_per_file=200_000,
                            row_group_size=rg) as w:
        w.write([f"v{i}" for i in range(codes.shape[0])], codes)
    build_sharded_index(str(codes_url), str(index_url), shards, spec=IndexSpec("flat", {}))
    build_s = time.perf_counter() - t0
    port, direct_port = free_ports(2)
    settings = ServeSection(index=str(index_url), port=port, direct_port=direct_port, shard_cpus=0.25,
                            router_cpus=0.25, app_name="bench-milvus", direct_drain_s=1.0)
    started = connect_ray(env=serve_cluster_env(settings))
    out: dict = {"build_s": build_s, "shards": shards}
    try:
        deploy(settings)
        base = service_url(settings)
        out["via"] = "router port" if not base.endswith(f":{port}") else "Serve proxy"
        session = requests.Session()
        while session.get(base + "/healthz", timeout=30).status_code != 200:
            time.sleep(0.2)
        hexes = [code_to_hex(q) for q in queries]

        def to_arrays(results: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
            D = np.array([[h["distance"] for h in hits] for hits in results], dtype=np.int32)
            I = np.array([[int(h["video_id"][1:]) for h in hits] for hits in results], dtype=np.int64)
            return D, I

        body = _json.dumps({"queries": [{"code": h} for h in hexes], "k": k})
        walls = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = session.post(base + "/search/batch", data=body, headers={"Content-Type": "application/json"})
            walls.append(time.perf_counter() - t0)
            r.raise_for_status()
        out["D"], out["I"] = to_arrays(r.json()["results"])
        out["qps"] = nq / min(walls)
        ns = min(single, nq)
        lat, results = np.empty(ns), []
        # single queries on one keep-alive http.client connection (as bench_serve.py: `requests` adds ~1.4 ms
        # of client-side Python per call on the shared cores)
        import http.client
        from urllib.parse import urlsplit

        conn = http.client.HTTPConnection(urlsplit(base).hostname, urlsplit(base).port, timeout=30)
        for j in range(ns):
            payload = _json.dumps({"code": hexes[j], "k": k})
            t0 = time.perf_counter()
            conn.request("POST", "/search", body=payload, headers={"Content-Type": "application/json"})
            reply = conn.getresponse().read()
            lat[j] = 1e3 * (time.perf_counter() - t0)
            results.append(_json.loads(reply)["results"])
        conn.close()
        out["single_D"], out["single_I"] = to_arrays(results)
        out.update(single_n=ns, p50_ms=float(np.percentile(lat, 50)), p99_ms=float(np.percentile(lat, 99)))
        print(f"service: batch {out['qps']:,.0f} qps, single p50 {out['p50_ms']:.2f} ms via {out['via']}", flush=True)
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    return out


# ----------------------------------------------------------------------------- (d) Milvus Lite


def _pids_holding(text: str) -> list[int]:
    """Pids of processes whose command line contains ``text`` (Linux /proc; [] elsewhere)."""
    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and int(p.name) != os.getpid():
            pids.append(int(p.name))
    return pids


def run_milvus(python: str, codes_npy: Path, queries_npy: Path, work: Path, args) -> dict:
    db = (work / "milvus_bench.db").resolve()
    out = work / "milvus_result.json"
    cmd = [
        python, "-W", "ignore::UserWarning", str(PEER),
        "--codes", str(codes_npy), "--queries", str(queries_npy), "--k", str(args.k), "--out", str(out),
        "--db-path", str(db), "--batch", str(args.milvus_batch), "--repeat", str(args.repeat),
        "--single", str(args.milvus_single), "--insert-batch", str(args.milvus_insert_batch), "--self-check",
    ]  # fmt: skip
    print(f"$ {shlex.join(cmd)}", flush=True)
    try:
        subprocess.run(cmd, check=True)
    finally:
        # The peer stops its server; make sure (by pid) that no milvus-lite process still holds our db.
        time.sleep(0.5)
        left = _pids_holding(str(db))
        for pid in left:
            print(f"warning: milvus-lite process {pid} still running after the peer exited; stopping it", flush=True)
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
    report = json.loads(out.read_text())
    res = np.load(report["results_npz"])
    report["D"], report["I"] = res["distances"], res["ids"]
    report["single_D"], report["single_I"] = res["single_distances"], res["single_ids"]
    report["left_behind"] = left
    return report


# ----------------------------------------------------------------------------- (e) answers


def _as_u64_words(a: np.ndarray) -> np.ndarray:
    """Packed codes (N, B) -> uint64 words (N, ceil(B/8)), zero-padded (popcount of XOR unchanged)."""
    b = a.shape[1]
    w = -(-b // 8)
    pad = np.zeros((a.shape[0], w * 8), dtype=np.uint8)
    pad[:, :b] = a
    return pad.view(np.uint64)


def _popcount64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    from vhindex.index.codes import popcount8

    return popcount8(x.view(np.uint8)).reshape(*x.shape, 8).sum(-1)


def oracle_topk_distances(codes: np.ndarray, queries: np.ndarray, k: int, chunk: int = 16) -> np.ndarray:
    """Exact sorted top-k Hamming distances per query by numpy popcount(XOR) over all codes."""
    db = _as_u64_words(codes)
    q = _as_u64_words(queries)
    out = np.empty((q.shape[0], k), dtype=np.int32)
    for s in range(0, q.shape[0], chunk):
        d = _popcount64(q[s : s + chunk, None, :] ^ db[None, :, :]).sum(axis=2, dtype=np.int32)
        out[s : s + chunk] = np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1)
    return out


def check_answers(
    name: str, D: np.ndarray, I: np.ndarray, codes: np.ndarray, queries: np.ndarray, D_true: np.ndarray
) -> list[str]:
    """Problems with one engine's answer (empty list: correct). Tie-aware (ids free within ties)."""
    problems = []
    nq, k = D.shape
    if D.shape != D_true.shape or I.shape != D.shape:
        return [f"{name}: shapes D {D.shape} I {I.shape}, expected {D_true.shape}"]
    bad = np.flatnonzero(~(np.sort(D, axis=1) == D_true).all(axis=1))
    if bad.size:
        r = bad[0]
        problems.append(
            f"{name}: {bad.size} queries with wrong distances, e.g. row {r}: {D[r].tolist()} != {D_true[r].tolist()}"
        )
    if (I < 0).any() or (I >= codes.shape[0]).any():
        problems.append(f"{name}: ids out of range")
        return problems
    real = _popcount64(_as_u64_words(queries)[:, None, :] ^ _as_u64_words(codes)[I]).sum(axis=2)
    wrong = np.argwhere(real != D)
    if wrong.size:
        r, c = wrong[0]
        problems.append(
            f"{name}: {len(wrong)} ids not at their returned distance, e.g. row {r} id {I[r, c]}: {real[r, c]} != {D[r, c]}"
        )
    srt = np.sort(I, axis=1)
    dup = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if dup.size:
        problems.append(f"{name}: {dup.size} rows repeat an id")
    return problems


def compare(D_a: np.ndarray, I_a: np.ndarray, D_b: np.ndarray, I_b: np.ndarray) -> dict:
    """How two correct answers differ: identical rows, and rows whose id sets differ (ties)."""
    same_ids = np.array([set(a) == set(b) for a, b in zip(I_a.tolist(), I_b.tolist(), strict=True)])
    same_order = (I_a == I_b).all(axis=1)
    return {
        "rows": int(len(same_ids)),
        "same_distances": int((np.sort(D_a, 1) == np.sort(D_b, 1)).all(axis=1).sum()),
        "same_id_sets": int(same_ids.sum()),
        "same_id_order": int(same_order.sum()),
    }


# ----------------------------------------------------------------------------- (f) report


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def render(
    args, cmdline: str, info: dict, venv_info: dict, vh: dict, mv: dict, checks: dict, started: str, load_after
) -> str:
    n, bits, nq, k = args.n, args.bits, args.nq, args.k
    mq = mv["batch_qps"]
    t_list = sorted(vh["batch"])
    lines = [
        f"# bench_milvus ({started})",
        "",
        f"machine: {info['cpu']}, {info['cpus']} CPUs, {info['os']}, python {info['python']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in info['load_avg'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in load_after)} (shared machine: other jobs ran alongside)",
        "",
        f"versions: vhindex faiss {vh['faiss_version']}, numpy {info['numpy']} | milvus-lite {mv['milvus_lite_version']}, "
        f"pymilvus {mv['pymilvus_version']} (own venv `{args.venv}`"
        + (f", created in {venv_info['install_s']:.0f}s" if venv_info.get("created") else ", already present")
        + ")",
        "",
        f"command: `{cmdline}`",
        "",
        f"data: {n:,} codes x {bits} bits (seed {args.seed}, {args.clusters:,} clusters, bit flip {args.flip}), "
        f"{nq:,} queries (database codes with bit flip {args.query_flip}), k = {k}; exact Hamming top-k "
        f"(vhindex `BinaryFlatIndex` = faiss `IndexBinaryFlat`; Milvus Lite `BIN_FLAT` / `HAMMING`)",
        "",
        "| path | build (s) | batch qps | single p50 (ms) | single p99 (ms) | vhindex ÷ Milvus Lite (batch qps) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in t_list:
        b, s = vh["batch"][t], vh["single"].get(t, {})
        lines.append(
            f"| vhindex in-process, {t} thread{'s' if t > 1 else ''} | {vh['build_s']:.2f} | {b['qps']:,.0f} | "
            f"{s.get('p50_ms', float('nan')):.3f} | {s.get('p99_ms', float('nan')):.3f} | **{b['qps'] / mq:,.1f}x** |"
        )
    sv = vh.get("service")
    if sv:
        lines.append(
            f"| vhindex HTTP service (Ray Serve, {sv['shards']} shards, {sv['via']}, client on this machine) | "
            f"{sv['build_s']:.2f} | {sv['qps']:,.0f} | {sv['p50_ms']:.3f} | {sv['p99_ms']:.3f} | **{sv['qps'] / mq:,.1f}x** |"
        )
    lines.append(
        f"| Milvus Lite (server, gRPC/UDS) | {mv['build_s']:.2f} | {mq:,.0f} | {mv.get('single_p50_ms', float('nan')):.3f} | "
        f"{mv.get('single_p99_ms', float('nan')):.3f} | 1.0x |"
    )
    if mv.get("single_n"):
        s1 = vh["single"][t_list[0]]
        lines += [
            "",
            f"single-query latency ratio (Milvus Lite p50 ÷ vhindex {t_list[0]}-thread p50): "
            f"**{mv['single_p50_ms'] / s1['p50_ms']:,.1f}x**",
        ]
    lines += [
        "",
        "Notes:",
        "",
        f"- build: vhindex = `BinaryFlatIndex.add` of {n:,} string ids + codes; Milvus Lite = insert "
        f"{mv['insert_s']:.2f}s (column insert, {mv['insert_batch']:,} rows per call) + flush {mv['flush_s']:.2f}s "
        f"+ BIN_FLAT index {mv['index_s']:.2f}s + load {mv['load_s']:.2f}s (server start {mv['server_start_s']:.2f}s not included).",
        f"- batch qps: all {nq:,} queries, best of {args.repeat} passes; vhindex one `search` call "
        f"(positions, no id lookup), Milvus Lite calls of {mv['batch']:,} queries each, results "
        f"converted to arrays (Milvus server busy {mv['batch_server_cores']:.2f} cores on average during its best pass).",
        f"- single: vhindex {vh['single'][t_list[0]]['n']:,} calls of one query; Milvus Lite {mv.get('single_n', 0):,} calls "
        "of one query (`MilvusClient.search`, one gRPC round trip over a Unix socket each).",
    ]
    busy = info["load_avg"] and info["load_avg"][0] >= (info["cpus"] or 1) - 0.5
    if busy and any(t > 1 for t in t_list):
        lines.append(
            f"- the machine was shared (1-min load {info['load_avg'][0]:.1f} on {info['cpus']} CPUs at start, this "
            "run niced): with another job on a core, a faiss call using more threads waits for its starved "
            "OpenMP thread, so multi-thread rows here measure contention, not scaling; compare the 1-thread row."
        )
    lines += [
        "",
        "Answers:",
        "",
    ]
    for name, probs in checks["problems"].items():
        lines.append(
            f"- {name}: "
            + (
                "correct (distances = exact top-k by numpy popcount(XOR), every id at its distance, no repeats)"
                if not probs
                else "; ".join(probs)
            )
        )
    c = checks["vh_vs_milvus"]
    lines.append(
        f"- vhindex vs Milvus Lite (batch): distances equal in {c['same_distances']:,}/{c['rows']:,} queries; "
        f"same id sets in {c['same_id_sets']:,}/{c['rows']:,} (the rest differ only among ids tied at the k-th distance), "
        f"same id order in {c['same_id_order']:,}/{c['rows']:,}."
    )
    lines.append(f"- overall: **{'AGREE' if checks['ok'] else 'DISAGREE'}**")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=700_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--nq", type=int, default=1_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clusters", type=int, default=5_000)
    ap.add_argument("--flip", type=float, default=0.1, help="bit flip probability, centre -> database code")
    ap.add_argument("--query-flip", type=float, default=0.05, help="bit flip probability, database code -> query")
    ap.add_argument("--threads", default="1,2", help="faiss thread counts for vhindex")
    ap.add_argument("--repeat", type=int, default=3, help="passes of batched search; best is reported")
    ap.add_argument("--single", type=int, default=1_000, help="vhindex single-query calls")
    ap.add_argument("--milvus-single", type=int, default=200, help="Milvus Lite single-query calls")
    ap.add_argument("--milvus-batch", type=int, default=1_000, help="queries per Milvus search call")
    ap.add_argument("--milvus-insert-batch", type=int, default=100_000, help="rows per Milvus insert call")
    ap.add_argument("--venv", default="bench-work/milvus-venv", help="Milvus venv (relative to the repo)")
    ap.add_argument("--work", default="bench-work/milvus-bench", help="folder for the .npy files and peer output")
    ap.add_argument("--service-shards", type=int, default=4,
                    help="also serve the codes over HTTP (vhindex service, this many shards); 0 skips it")
    ap.add_argument("--report", default="benchmarks/results/bench_milvus.md", help="markdown output ('' for none)")
    args = ap.parse_args(argv)
    if args.bits <= 0 or args.bits % 8:
        ap.error("--bits must be a positive multiple of 8")
    threads = [int(t) for t in args.threads.split(",") if t]
    started = dt.datetime.now().isoformat(timespec="seconds")
    cmdline = "python " + shlex.join([os.path.relpath(__file__, REPO), *(sys.argv[1:] if argv is None else argv)])
    info = machine_info()

    venv = Path(args.venv)
    venv = venv if venv.is_absolute() else REPO / venv
    work = Path(args.work)
    work = work if work.is_absolute() else REPO / work
    for p in (venv, work):
        warn = _check_ignored(p)
        if warn:
            print(f"warning: {warn}", flush=True)
    venv_info = ensure_milvus_venv(venv)
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    codes, queries = make_codes(args.n, args.bits, args.nq, args.clusters, args.flip, args.query_flip, args.seed)
    codes_npy, queries_npy = work / "codes.npy", work / "queries.npy"
    np.save(codes_npy, codes)
    np.save(queries_npy, queries)
    print(
        f"data: {args.n:,} x {args.bits} bits, {args.nq:,} queries in {time.perf_counter() - t0:.1f}s -> {work}",
        flush=True,
    )

    vh = bench_vhindex(codes, queries, args.k, threads, args.repeat, args.single)
    if args.service_shards:
        vh["service"] = bench_service(codes, queries, args.k, args.service_shards, args.repeat, args.single, work)
    mv = run_milvus(venv_info["python"], codes_npy, queries_npy, work, args)

    t0 = time.perf_counter()
    D_true = oracle_topk_distances(codes, queries, args.k)
    print(f"oracle: exact top-{args.k} distances of {args.nq:,} queries in {time.perf_counter() - t0:.1f}s", flush=True)
    problems = {}
    for t in threads:
        problems[f"vhindex batch ({t} thr)"] = check_answers(
            "vhindex", vh["batch"][t]["D"], vh["batch"][t]["I"], codes, queries, D_true
        )
        ns = vh["single"][t]["n"]
        problems[f"vhindex single ({t} thr)"] = check_answers(
            "vhindex single", vh["single"][t]["D"], vh["single"][t]["I"], codes, queries[:ns], D_true[:ns]
        )
    if "service" in vh:
        sv = vh["service"]
        problems["vhindex HTTP service batch"] = check_answers("service", sv["D"], sv["I"], codes, queries, D_true)
        problems["vhindex HTTP service single"] = check_answers(
            "service single", sv["single_D"], sv["single_I"], codes, queries[: sv["single_n"]], D_true[: sv["single_n"]]
        )
    problems["Milvus Lite batch"] = check_answers("milvus", mv["D"], mv["I"], codes, queries, D_true)
    ns = mv["single_D"].shape[0]
    if ns:
        problems["Milvus Lite single"] = check_answers(
            "milvus single", mv["single_D"], mv["single_I"], codes, queries[:ns], D_true[:ns]
        )
    checks = {
        "problems": problems,
        "vh_vs_milvus": compare(vh["D"], vh["I"], mv["D"], mv["I"]),
        "ok": not any(problems.values()) and not mv["left_behind"],
    }
    text = render(args, cmdline, info, venv_info, vh, mv, checks, started, os.getloadavg())
    print()
    print(text)
    if args.report:
        rp = Path(args.report)
        rp = rp if rp.is_absolute() else REPO / rp
        rp.parent.mkdir(parents=True, exist_ok=True)
        rp.write_text(text)
        print(f"wrote {rp}")
    for f in (codes_npy, queries_npy, work / "milvus_result.json", Path(mv["results_npz"])):
        f.unlink(missing_ok=True)
    for d in (work / "service-codes", work / "service-index"):
        shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.rmdir()  # only if empty
    return 0 if checks["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
