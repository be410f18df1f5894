"""JSON / markdown / PNG outputs of evaluation results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vhindex.eval import EvalResult, evaluate, markdown_table, plot_map_vs_k, plot_pr_curves


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    db = rng.choice([-1, 1], size=(120, 16))
    labels = rng.integers(0, 6, 120)
    out = {}
    for name, noise in (("good", 0.05), ("noisy", 0.4)):
        q = np.where(rng.random(db.shape) < noise, -db, db)
        out[name] = evaluate(db, q, labels, labels, ks=(5, 10, 20), precision_ns=(10, 50))
    out["no-pr"] = evaluate(db, db, labels, labels, ks=(5, 10), pr=False, protocol="standard")
    return out


def test_json_round_trip(results):
    for r in results.values():
        text = r.to_json()
        back = EvalResult.from_json(text)
        assert back.map_at_k == r.map_at_k and list(back.map_at_k) == list(r.map_at_k)
        assert back.precision_at_n == r.precision_at_n
        assert (back.protocol, back.n_query, back.n_db, back.bits) == (r.protocol, r.n_query, r.n_db, r.bits)
        if r.pr is None:
            assert back.pr is None
        else:
            np.testing.assert_array_equal(back.pr.precision, r.pr.precision)  # nan == nan here
            np.testing.assert_array_equal(back.pr.recall, r.pr.recall)
            np.testing.assert_array_equal(back.pr.n_precision, r.pr.n_precision)
        assert json.loads(text)["map_at_k"]["5"] == r.map_at_k[5]


def test_json_is_strict_with_undefined_precision():
    # Query far from every item: nothing retrieved at small radii -> precision undefined (nan).
    db = np.zeros((3, 1), np.uint8)
    q = np.full((1, 1), 255, np.uint8)
    r = evaluate(db, q, np.zeros(3, int), np.zeros(1, int), ks=(1,), precision_ns=())
    assert math.isnan(r.pr.precision[0]) and r.pr.precision[8] == 1.0
    text = r.to_json()
    assert "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = EvalResult.from_json(text)
    assert math.isnan(back.pr.precision[0])


def test_markdown(results):
    table = markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == "| method | protocol | mAP@5 | mAP@10 | mAP@20 |"  # mixed protocols -> column
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| good | paper | ") and f"{results['good'].map_at_k[10]:.4f}" in lines[2]
    assert lines[4].endswith("| - |")  # no-pr has no mAP@20
    same = markdown_table({k: results[k] for k in ("good", "noisy")}, ks=(10,), digits=3)
    assert same.splitlines()[0] == "| method | mAP@10 |"
    md = results["good"].to_markdown()
    assert md.count("\n| 5 |") == 1 and "| 20 |" in md and "| N | P@N |" in md
    with pytest.raises(ValueError, match="empty"):
        markdown_table({})


def test_plots(results, tmp_path):
    a = plot_map_vs_k(results, tmp_path / "sub" / "map.png")
    b = plot_pr_curves(results, tmp_path / "pr.png")
    for p in (a, b):
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="pr=True"):
        plot_pr_curves({"x": results["no-pr"]}, tmp_path / "none.png")


def test_write_report_to_any_fsspec_url(results, s3_server):
    import fsspec

    from vhindex.eval import write_report

    for url, so in ((f"memory://report-{id(results)}", None), (s3_server.url("report"), s3_server.storage_options)):
        names = write_report(results, url, storage_options=so)
        assert set(names) == {"results.json", "results.md", "map_vs_k.png", "pr_curves.png"}
        fs, root = fsspec.core.url_to_fs(url, **(so or {}))
        back = json.loads(fs.cat(f"{root}/results.json"))
        assert {k: EvalResult.from_dict(v).map_at_k for k, v in back.items()} == {
            k: r.map_at_k for k, r in results.items()
        }
        assert fs.cat(f"{root}/results.md").decode().strip() == markdown_table(results)
        for png in ("map_vs_k.png", "pr_curves.png"):
            assert fs.cat(f"{root}/{png}")[:8] == b"\x89PNG\r\n\x1a\n"
