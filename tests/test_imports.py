"""The core must import and run with ray and dask absent (they are blocked, not just unused)."""

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("ray", "dask", "distributed")
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
                          timeout=300)


def test_blocker_really_blocks():
    # Guard against a blocker that silently lets imports through (then the test below proves nothing).
    proc = _run("import ray")
    assert proc.returncode != 0 and "blocked by test: ray" in proc.stderr
    proc = _run("import dask.array")
    assert proc.returncode != 0 and "blocked by test: dask" in proc.stderr


def test_core_imports_and_runs_without_ray_or_dask(tmp_path):
    proc = _run(
        f"""
        import numpy as np
        import vhindex, vhindex.data, vhindex.eval, vhindex.index, vhindex.models
        import vhindex.config, vhindex.cli, vhindex.pipeline, vhindex.demo, vhindex.data.synth
        from vhindex.data import FrameDataset
        from vhindex.data.synth import SYNTH_PRESETS, write_synthetic
        from vhindex.pipeline import fit_model, encode_in_memory, labels_for
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
