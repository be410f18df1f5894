"""Tables and plots comparing evaluation results of several methods.

Plots are drawn with matplotlib's Agg canvas on a bare ``Figure`` (no pyplot, so the global
backend of an interactive session is left alone), imported lazily inside the functions so that
importing :mod:`vhindex.eval` stays cheap and headless-safe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vhindex.eval.metrics import EvalResult

__all__ = ["markdown_table", "plot_map_vs_k", "plot_pr_curves", "write_report"]


def _check_results(results: Mapping[str, EvalResult], what: str) -> None:
    if not results:
        raise ValueError(f"{what}: results is empty; pass {{method_name: EvalResult}}")
    for name, r in results.items():
        if not isinstance(r, EvalResult):
            raise ValueError(f"{what}: results[{name!r}] is a {type(r).__name__}, expected an EvalResult")


def markdown_table(results: Mapping[str, EvalResult], ks: Sequence[int] | None = None, digits: int = 4) -> str:
    """Markdown table comparing methods: one row per method, one column per mAP@K.

    Args:
        results: ``{method_name: EvalResult}``, rows in this order.
        ks: Columns to show; ``None``: every K of any result, in first-seen order. A K a method
            lacks shows as ``-``.
        digits: Decimals shown.

    Returns:
        The table (no trailing newline). When the results mix protocols a ``protocol`` column is
        added, since paper-protocol and standard-protocol numbers are not comparable.
    """
    _check_results(results, "markdown_table")
    if ks is None:
        cols: list[int] = []
        for r in results.values():
            cols += [k for k in r.map_at_k if k not in cols]
    else:
        cols = [int(k) for k in ks]
    mixed = len({r.protocol for r in results.values()}) > 1
    header = ["method"] + (["protocol"] if mixed else []) + [f"mAP@{k}" for k in cols]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + (["---"] if mixed else []) + ["---:"] * len(cols)) + " |",
    ]
    for name, r in results.items():
        cells = [str(name)] + ([r.protocol] if mixed else [])
        cells += [f"{r.map_at_k[k]:.{digits}f}" if k in r.map_at_k else "-" for k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _new_figure(figsize: tuple[float, float]):
    """A figure drawn by the Agg canvas, without pyplot (no global backend switch, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def plot_map_vs_k(results: Mapping[str, EvalResult], path: str | os.PathLike, title: str | None = None) -> Path:
    """Line plot of mAP@K against K, one line per method, written as a PNG.

    Args:
        results: ``{method_name: EvalResult}``.
        path: Local output file (parent folders are created).
        title: Plot title; default names the protocol(s).

    Returns:
        The written path.
    """
    fig = _map_vs_k_figure(results, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _map_vs_k_figure(results: Mapping[str, EvalResult], title: str | None):
    _check_results(results, "plot_map_vs_k")
    fig, ax = _new_figure((6, 4))
    for name, r in results.items():
        ks = sorted(r.map_at_k)
        ax.plot(ks, [r.map_at_k[k] for k in ks], marker="o", label=name)
    protocols = sorted({r.protocol for r in results.values()})
    ax.set_xlabel("K")
    ax.set_ylabel("mAP@K")
    ax.set_title(title or f"mAP@K ({', '.join(protocols)} protocol)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pr_curves(results: Mapping[str, EvalResult], path: str | os.PathLike, title: str | None = None) -> Path:
    """Precision-recall curves over Hamming radii, one line per method, written as a PNG.

    Methods evaluated without a PR curve (``pr=False``) are skipped.

    Args:
        results: ``{method_name: EvalResult}``.
        path: Local output file (parent folders are created).
        title: Plot title.

    Returns:
        The written path.

    Raises:
        ValueError: If no result holds a PR curve.
    """
    fig = _pr_figure(results, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _pr_figure(results: Mapping[str, EvalResult], title: str | None):
    _check_results(results, "plot_pr_curves")
    with_pr = {n: r for n, r in results.items() if r.pr is not None}
    if not with_pr:
        raise ValueError("plot_pr_curves: no result has a PR curve; evaluate with pr=True")
    fig, ax = _new_figure((5, 5))
    for name, r in with_pr.items():
        ok = ~np.isnan(r.pr.precision) & ~np.isnan(r.pr.recall)
        ax.plot(r.pr.recall[ok], r.pr.precision[ok], marker=".", label=f"{name} ({r.bits} bits)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Precision-recall over Hamming radius")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_report(
    results: Mapping[str, EvalResult],
    url: str,
    *,
    storage_options: dict | None = None,
    plots: bool = True,
) -> list[str]:
    """Write ``results.json``, ``results.md`` and (``plots``) ``map_vs_k.png`` / ``pr_curves.png`` to ``url``.

    ``url`` is any fsspec folder URL (plots are rendered in memory, so ``s3://`` works too).

    Returns:
        The names of the files written.
    """
    import io

    from vhindex import fs as vfs

    _check_results(results, "write_report")
    fs, root = vfs.url_to_fs(url, storage_options)
    fs.makedirs(root, exist_ok=True)
    files = {
        "results.json": (json.dumps({k: r.to_dict() for k, r in results.items()}, indent=2) + "\n").encode(),
        "results.md": (markdown_table(results) + "\n").encode(),
    }
    if plots:
        figures = {"map_vs_k.png": _map_vs_k_figure(results, None)}
        if any(r.pr is not None for r in results.values()):
            figures["pr_curves.png"] = _pr_figure(results, None)
        for name, fig in figures.items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            files[name] = buf.getvalue()
    for name, data in files.items():
        vfs.write_bytes_atomic(fs, vfs.join(fs, root, name), data)
    return list(files)
