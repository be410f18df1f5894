"""The shape of the tree: the core imports and runs with the runtime blocked, and imports point one way.

* every ``vhindex`` module outside the app layer (``vhindex.app``) imports with ``cluster``, ``ray``,
  ``dask`` and ``distributed`` blocked, and no such module names ``cluster`` in any import statement;
* ``vhindex.train`` trains and builds its anchor graph in this process with them blocked;
* no import circle among the modules of ``vhindex/`` and ``cluster/`` (function-level imports count).
"""

import ast
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("ray", "dask", "distributed", "cluster")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked by test: {name}")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_blocker_really_blocks():
    # Guard against a blocker that silently lets imports through (then the tests below prove nothing).
    proc = _run("import ray")
    assert proc.returncode != 0 and "blocked by test: ray" in proc.stderr
    proc = _run("import dask.array")
    assert proc.returncode != 0 and "blocked by test: dask" in proc.stderr
    proc = _run("import cluster.serve")
    assert proc.returncode != 0 and "blocked by test: cluster" in proc.stderr


def test_core_imports_and_runs_without_ray_or_dask(tmp_path):
    proc = _run(
        f"""
        import numpy as np
        import vhindex, vhindex.data, vhindex.eval, vhindex.index, vhindex.models
        import vhindex.config, vhindex.app.cli, vhindex.inprocess, vhindex.app.demo, vhindex.data.synth
        from vhindex.data import FrameDataset
        from vhindex.data.synth import SYNTH_PRESETS, write_synthetic
        from vhindex.inprocess import fit_model, encode_in_memory, labels_for
        from vhindex.eval import map_at_k
        write_synthetic(SYNTH_PRESETS["tiny"], {str(tmp_path)!r})
        train, query, db = (FrameDataset.open({str(tmp_path)!r} + "/" + s) for s in ("train", "query", "database"))
        model = fit_model("lsh", 16, train)
        qi, qc = encode_in_memory(model, query)
        di, dc = encode_in_memory(model, db)
        n = db.meta.num_classes
        res = map_at_k(dc, qc, labels_for(di, db, n), labels_for(qi, query, n), ks=(5,))
        assert 0.0 < res[5] <= 1.0, res
        mods = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "dask", "distributed"))
        assert not mods, mods
        print("OK", res)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


def _core_modules() -> list[str]:
    import vhindex

    names = ["vhindex"]
    for info in pkgutil.walk_packages(vhindex.__path__, "vhindex."):
        if not (info.name == "vhindex.app" or info.name.startswith("vhindex.app.") or info.name == "vhindex.__main__"):
            names.append(info.name)
    return names


def test_every_core_module_imports_with_the_runtime_blocked():
    names = _core_modules()
    assert len(names) > 40 and "vhindex.graph.stage" in names and "vhindex.train.recipes" in names
    proc = _run(
        f"""
        import importlib
        failed = []
        for name in {names!r}:
            try:
                importlib.import_module(name)
            except Exception as err:
                failed.append(f"{{name}}: {{type(err).__name__}}: {{err}}")
        assert not failed, failed
        mods = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "dask", "distributed", "cluster"))
        assert not mods, mods
        print("OK", len({names!r}))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


def test_training_builds_its_graph_in_process_with_the_runtime_blocked(tmp_path):
    proc = _run(
        f"""
        from vhindex.config import load_config
        from vhindex.train.recipes import run_recipe
        cfg = load_config("configs/train/demo.yaml", ["run.output_dir={tmp_path}", "train.teacher_epochs=1",
                                                      "train.epochs=1", "graph.executor=sequential"])
        result = run_recipe(cfg, progress=False)
        assert result.stages["graph"] == "ran", result.stages
        from vhindex.graph.stage import load_graph
        anchors, graph, ids, manifest = load_graph("{tmp_path}/graph")
        assert manifest.k == cfg.graph.anchors and manifest.a == cfg.graph.nearest_anchors, manifest
        assert manifest.executor == "SequentialExecutor", manifest.executor
        mods = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "dask", "distributed", "cluster"))
        assert not mods, mods
        print("OK", result.map_at_k)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


# --------------------------------------------------------------------------- the import graph


def _module_files() -> dict[str, Path]:
    mods = {}
    for pkg in ("vhindex", "cluster"):
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _import_edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports, at any depth of its code (lazy imports count)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if is_pkg else m.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r is not None and r != m:
                    edges[m].add(r)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_vhindex_and_cluster():
    edges = _import_edges(_module_files())
    assert "vhindex.graph.stage" in edges["vhindex.train.recipes"]  # the walker sees lazy imports
    assert _cycles(edges) == []


def test_only_the_app_layer_imports_cluster():
    edges = _import_edges(_module_files())
    reach = sorted((m, t) for m, ts in edges.items() for t in ts
                   if m.startswith("vhindex") and not m.startswith("vhindex.app") and t.startswith("cluster"))
    assert reach == []
    assert any(t.startswith("cluster") for t in edges["vhindex.app.engines"])
