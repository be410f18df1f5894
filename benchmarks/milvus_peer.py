"""Milvus Lite side of ``bench_milvus.py``: exact Hamming top-k over the same packed codes.

Runs INSIDE the Milvus venv (``milvus-lite==2.5.1``, ``pymilvus<2.6``, ``setuptools<81``, numpy);
imports only numpy and pymilvus, never vhindex. ``bench_milvus.py`` creates that venv and calls
this script; it can also be run by hand::

    bench-work/milvus-venv/bin/python benchmarks/milvus_peer.py \\
        --codes codes.npy --queries queries.npy --k 10 --out milvus.json --single 200

What it does, timing each step:

1. starts Milvus Lite on ``--db-path`` (``MilvusClient(path)`` spawns a ``milvus`` server
   process; the path's file name must match ``^[a-zA-Z0-9.\\-_]+$`` and be at most 36 chars);
2. creates a collection ``id INT64 primary key`` + ``v BINARY_VECTOR(dim=bits)`` and inserts the
   codes with ``id`` = row number, ``--insert-batch`` rows per call. A binary vector is passed
   as ``bytes`` of length bits/8 -- the packed bytes exactly as stored in ``codes.npy``;
3. ``flush``, builds a ``BIN_FLAT`` index with metric ``HAMMING``, ``load_collection``;
4. searches all queries in calls of ``--batch`` queries (best of ``--repeat`` passes), then
   ``--single`` queries one call each (latency p50/p99).

Bit order: Milvus takes the bytes as given (8 dimensions per byte; its docs pack with
``np.packbits``, i.e. most significant bit first, the same as vhindex's msb0). HAMMING is
``popcount(a XOR b)`` over the bytes and does not depend on the order of bits within a byte,
so the distances equal numpy's popcount of XOR as long as both sides use the same bytes;
``--self-check`` verifies that on a tiny hand-made case before the benchmark.

Writes ``--out`` (JSON: timings, versions, sizes) and a sidecar ``<out>.npz`` with the results:
``ids`` int64 (nq, k), ``distances`` int32 (nq, k) for the batched search and ``single_ids`` /
``single_distances`` for the single-query calls.

The server process is released in a ``finally`` block (``release_server`` unlocks the db file,
which makes the ``milvus`` process exit; it is killed if it has not exited 2 s later). If this
script is killed outright, the kernel drops its lock on the file and the server exits by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

COLLECTION = "vhindex_bench"
ALIAS = "vhindex_bench_orm"
MAX_TOPK = 16384  # Milvus rejects a larger search limit ("Topk should be in range [1, 16384]")
# (milvus-lite 2.5.1 accepted 16,385 queries in one search call and 2,000,000 rows in one insert.)


def _log(msg: str) -> None:
    print(f"[milvus_peer] {msg}", file=sys.stderr, flush=True)


def _proc_cpu_s(pid: int | None) -> float:
    """utime + stime of process ``pid`` in seconds (nan if unreadable)."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _server_pid(db_path: pathlib.Path) -> int | None:
    """Pid of the milvus-lite server that pymilvus spawned for ``db_path`` (private attributes)."""
    try:
        from milvus_lite.server_manager import server_manager_instance

        server = server_manager_instance._servers.get(str(db_path.absolute().resolve()))
        return server._p.pid if server is not None and server._p is not None else None
    except Exception:  # noqa: BLE001 -- informational only
        return None


def _release(db_path: pathlib.Path) -> None:
    """Stop the milvus-lite server for ``db_path`` (no-op if none)."""
    try:
        from milvus_lite.server_manager import server_manager_instance

        if str(db_path.absolute().resolve()) in server_manager_instance._servers:
            server_manager_instance.release_server(str(db_path))
    except Exception as e:  # noqa: BLE001
        _log(f"releasing the server failed: {e!r}")


def _to_arrays(results, k: int) -> tuple[np.ndarray, np.ndarray]:
    """pymilvus search hits -> (ids int64 (nq, k), distances int32 (nq, k)); -1 / bits+1 never occur here."""
    nq = len(results)
    ids = np.full((nq, k), -1, dtype=np.int64)
    dist = np.full((nq, k), -1, dtype=np.int32)
    for r, hits in enumerate(results):
        for c, h in enumerate(hits):
            ids[r, c] = h["id"]
            d = h["distance"]
            if d != int(d):
                raise RuntimeError(f"non-integer Hamming distance {d!r} in row {r}")
            dist[r, c] = int(d)
    return ids, dist


def _new_collection(client, name: str, bits: int) -> None:
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.BINARY_VECTOR, dim=bits)
    client.create_collection(name, schema=schema)


def _index(client, name: str) -> None:
    from pymilvus import MilvusClient

    params = MilvusClient.prepare_index_params()
    params.add_index(field_name="v", index_type="BIN_FLAT", metric_type="HAMMING")
    client.create_index(name, params)


SEARCH_PARAMS = {"metric_type": "HAMMING", "params": {}}


def _search(client, name: str, queries: np.ndarray, k: int):
    return client.search(
        name,
        data=[q.tobytes() for q in queries],
        anns_field="v",
        limit=k,
        search_params=SEARCH_PARAMS,
        output_fields=[],
    )


def self_check(client) -> None:
    """Hand case: Milvus HAMMING distances == numpy popcount(XOR) on the same bytes (16-bit codes)."""
    name = "vhindex_selfcheck"
    codes = np.array(
        [[0x80, 0x00], [0x00, 0x01], [0xFF, 0xFF], [0x01, 0x00], [0x00, 0x80], [0x00, 0x00], [0xF0, 0x0F]],
        dtype=np.uint8,
    )
    queries = np.array([[0x80, 0x00], [0x00, 0x01], [0x0F, 0xF0]], dtype=np.uint8)
    _new_collection(client, name, 16)
    client.insert(name, [{"id": i, "v": c.tobytes()} for i, c in enumerate(codes)])
    _index(client, name)
    client.load_collection(name)
    res = _search(client, name, queries, len(codes))
    for qi, hits in enumerate(res):
        got = {int(h["id"]): int(h["distance"]) for h in hits}
        want = {i: int(np.unpackbits(queries[qi] ^ codes[i]).sum()) for i in range(len(codes))}
        if got != want:
            raise AssertionError(f"self-check query {qi}: milvus {got} != numpy popcount(xor) {want}")
    # the stored bytes come back unchanged (no reordering of bits or bytes on the way in)
    back = client.query(name, filter="id >= 0", output_fields=["v"])
    for row in back:
        stored = row["v"][0] if isinstance(row["v"], list) else row["v"]
        if bytes(stored) != codes[row["id"]].tobytes():
            raise AssertionError(
                f"self-check: id {row['id']} stored {bytes(stored).hex()} != {codes[row['id']].tobytes().hex()}"
            )
    client.drop_collection(name)
    _log("self-check ok: HAMMING distances equal numpy popcount(XOR); bytes round-trip unchanged")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--codes", required=True, help="uint8 (N, bits/8) packed codes (.npy)")
    ap.add_argument("--queries", required=True, help="uint8 (nq, bits/8) packed query codes (.npy)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", required=True, help="JSON report; results go to the sidecar <out>.npz")
    ap.add_argument(
        "--db-path", default="bench-work/milvus-peer/milvus_bench.db", help="milvus-lite db file (recreated)"
    )
    ap.add_argument("--batch", type=int, default=1000, help="queries per search call")
    ap.add_argument("--repeat", type=int, default=3, help="passes over all queries in batches; best is reported")
    ap.add_argument("--single", type=int, default=200, help="also time this many single-query calls (0: none)")
    ap.add_argument("--insert-batch", type=int, default=50_000, help="rows per insert call")
    ap.add_argument(
        "--insert-api",
        choices=("column", "row"),
        default="column",
        help="column: ORM Collection.insert of columns (linear); row: MilvusClient.insert of dicts "
        "(pymilvus 2.5 builds the binary field by repeated bytes +=, quadratic memory: small batches only)",
    )
    ap.add_argument("--self-check", action="store_true", help="verify Hamming == popcount(XOR) on a hand case first")
    ap.add_argument("--keep-db", action="store_true", help="leave the db file behind")
    args = ap.parse_args(argv)

    import milvus_lite
    import pymilvus
    from pymilvus import Collection, MilvusClient, connections

    codes = np.load(args.codes)
    queries = np.load(args.queries)
    for name, a in (("codes", codes), ("queries", queries)):
        if a.dtype != np.uint8 or a.ndim != 2:
            raise SystemExit(f"{name} must be uint8 (N, bits/8), got {a.dtype} {a.shape}")
    if codes.shape[1] != queries.shape[1]:
        raise SystemExit(f"codes have {codes.shape[1] * 8} bits, queries {queries.shape[1] * 8}")
    n, nbytes = codes.shape
    nq, bits, k = queries.shape[0], nbytes * 8, args.k
    if not 1 <= k <= MAX_TOPK:
        raise SystemExit(f"--k must be in 1..{MAX_TOPK} (Milvus topk limit)")
    if args.batch < 1:
        raise SystemExit("--batch must be >= 1")

    db_path = pathlib.Path(args.db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    if db_path.is_dir():
        shutil.rmtree(db_path)
    elif db_path.exists():
        db_path.unlink()

    report: dict = {
        "engine": "milvus-lite",
        "milvus_lite_version": getattr(milvus_lite, "__version__", "?"),
        "pymilvus_version": pymilvus.__version__,
        "python": sys.version.split()[0],
        "n": int(n),
        "bits": int(bits),
        "nq": int(nq),
        "k": int(k),
        "batch": args.batch,
        "insert_batch": args.insert_batch,
        "index": "BIN_FLAT",
        "metric": "HAMMING",
    }
    client = None
    orm_alias = None
    try:
        t0 = time.perf_counter()
        client = MilvusClient(str(db_path))
        report["server_start_s"] = time.perf_counter() - t0
        pid = _server_pid(db_path)
        report["server_pid"] = pid
        _log(f"milvus-lite server up in {report['server_start_s']:.2f}s (pid {pid})")

        if args.self_check:
            self_check(client)
            report["self_check"] = "ok"

        _new_collection(client, COLLECTION, bits)
        t0 = time.perf_counter()
        if args.insert_api == "column":
            # ORM column insert on a second connection to the same server (the path maps to the
            # running server): pymilvus joins the vectors' bytes once (linear).
            connections.connect(alias=ALIAS, uri=str(db_path))
            orm_alias = ALIAS
            coll = Collection(COLLECTION, using=ALIAS)
            for start in range(0, n, args.insert_batch):
                block = codes[start : start + args.insert_batch]
                coll.insert([list(range(start, start + len(block))), [row.tobytes() for row in block]])
        else:
            # MilvusClient.insert (rows): pymilvus appends each vector with `bytes_field += ...`,
            # quadratic in the rows per call -- keep --insert-batch small (<= ~5,000).
            for start in range(0, n, args.insert_batch):
                block = codes[start : start + args.insert_batch]
                rows = [{"id": start + i, "v": row.tobytes()} for i, row in enumerate(block)]
                client.insert(COLLECTION, rows)
        report["insert_s"] = time.perf_counter() - t0
        report["insert_api"] = args.insert_api
        t0 = time.perf_counter()
        client.flush(COLLECTION)
        report["flush_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _index(client, COLLECTION)
        report["index_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.load_collection(COLLECTION)
        report["load_s"] = time.perf_counter() - t0
        report["build_s"] = report["insert_s"] + report["flush_s"] + report["index_s"] + report["load_s"]
        _log(
            f"insert {report['insert_s']:.2f}s, flush {report['flush_s']:.2f}s, index {report['index_s']:.2f}s, "
            f"load {report['load_s']:.2f}s"
        )
        count = client.query(COLLECTION, filter="", output_fields=["count(*)"], consistency_level="Strong")
        report["count"] = int(count[0]["count(*)"])
        if report["count"] != n:
            raise RuntimeError(f"collection holds {report['count']} rows, expected {n}")

        _search(client, COLLECTION, queries[:1], k)  # warm-up
        passes = []
        ids = dist = None
        for _ in range(max(1, args.repeat)):
            cpu0 = _proc_cpu_s(pid)
            t0 = time.perf_counter()
            parts = []
            for start in range(0, nq, args.batch):
                parts.append(_to_arrays(_search(client, COLLECTION, queries[start : start + args.batch], k), k))
            wall = time.perf_counter() - t0
            passes.append({"wall_s": wall, "server_cpu_s": _proc_cpu_s(pid) - cpu0})
            ids = np.concatenate([p[0] for p in parts])
            dist = np.concatenate([p[1] for p in parts])
        best = min(passes, key=lambda p: p["wall_s"])
        report["batch_passes"] = passes
        report["batch_search_s"] = best["wall_s"]
        report["batch_qps"] = nq / best["wall_s"]
        report["batch_server_cores"] = best["server_cpu_s"] / best["wall_s"]
        _log(
            f"batched search: {report['batch_qps']:.1f} qps (best of {len(passes)}), "
            f"server busy {report['batch_server_cores']:.2f} cores"
        )

        ns = min(args.single, nq)
        single_ids = np.zeros((ns, k), dtype=np.int64)
        single_dist = np.zeros((ns, k), dtype=np.int32)
        lat = []
        for i in range(ns):
            t0 = time.perf_counter()
            res = _search(client, COLLECTION, queries[i : i + 1], k)
            si, sd = _to_arrays(res, k)
            lat.append(time.perf_counter() - t0)
            single_ids[i], single_dist[i] = si[0], sd[0]
        report["single_n"] = ns
        if ns:
            lat_ms = np.array(lat) * 1e3
            report["single_p50_ms"] = float(np.percentile(lat_ms, 50))
            report["single_p99_ms"] = float(np.percentile(lat_ms, 99))
            report["single_mean_ms"] = float(lat_ms.mean())
            _log(
                f"single queries: p50 {report['single_p50_ms']:.2f} ms, p99 {report['single_p99_ms']:.2f} ms ({ns} calls)"
            )

        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        npz = out.with_suffix(".npz")
        np.savez(npz, ids=ids, distances=dist, single_ids=single_ids, single_distances=single_dist)
        report["results_npz"] = str(npz)
        out.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"wrote {out} and {npz}")
    finally:
        if orm_alias is not None:
            try:
                connections.disconnect(orm_alias)
            except Exception as e:  # noqa: BLE001
                _log(f"disconnect failed: {e!r}")
        if client is not None:
            try:
                client.close()
            except Exception as e:  # noqa: BLE001
                _log(f"client.close failed: {e!r}")
        _release(db_path)
        if not args.keep_db:
            for p in (db_path, db_path.parent / f".{db_path.name}.lock"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
