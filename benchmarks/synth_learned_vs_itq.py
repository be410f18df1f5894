"""The synthetic demo preset at every code length: a learned model against ITQ, over several seeds.

Runs ``vhindex demo`` once per seed with the learned model trained at every ``demo.bits`` (not only the
64 bits ``make demo`` trains) and without the Serve part, then tabulates mAP@K (the demo's protocol,
paper by default) as mean ± sample std over the seeds, and whether the learned model is ahead of ITQ
at every K. Nothing is tuned on the demo's query / database: the learned model keeps the settings in
``configs/demo.yaml`` (``demo.learned_params`` / ``demo.learned_train``).

    .venv/bin/python benchmarks/synth_learned_vs_itq.py --seeds 0 1 2 --out bench-work/synth \\
        --report benchmarks/results/synth_learned_vs_itq.md

``--skip-run`` tabulates the runs already under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np


def run_seed(seed: int, out: Path, model: str, bits: list[int], extra: list[str]) -> float:
    """One ``vhindex demo`` run (seconds)."""
    cmd = [str(Path(sys.executable).parent / "vhindex"), "demo", "--config", "configs/demo.yaml",
           f"run.seed={seed}", f"run.output_dir={out / f'seed{seed}'}", f"demo.learned=[{model}]",
           f"demo.learned_bits=[{','.join(map(str, bits))}]", f"demo.bits=[{','.join(map(str, bits))}]",
           "demo.serve=false", "demo.example_queries=0", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def machine() -> str:
    """CPU model and core count, for the report (``bench_milvus.machine_info``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_milvus import machine_info

    info = machine_info()
    return f"{info['cpu']}, {info['cpus']} cores"


def cell(values: list[float]) -> str:
    """``mean ± sample std`` (just the value for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--model", default="gcmh")
    p.add_argument("--out", default="bench-work/synth")
    p.add_argument("--report", default="benchmarks/results/synth_learned_vs_itq.md")
    p.add_argument("--skip-run", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    a = p.parse_args(argv)
    out = Path(a.out)
    seconds = {}
    if not a.skip_run:
        for seed in a.seeds:
            seconds[seed] = run_seed(seed, out, a.model, a.bits, a.overrides)
    results = {seed: json.loads((out / f"seed{seed}" / "eval" / "results.json").read_text()) for seed in a.seeds}
    ks = sorted(int(k) for k in results[a.seeds[0]][f"itq-{a.bits[0]}"]["map_at_k"])
    protocol = results[a.seeds[0]][f"itq-{a.bits[0]}"]["protocol"]
    lines = [f"# {a.model.upper()} vs ITQ on the synthetic demo preset", "",
             f"{date.today().isoformat()}, {machine()}; {len(a.seeds)} seeds {a.seeds}; mAP@K, {protocol} "
             "protocol, mean ± sample std over seeds.", "",
             "Command: `.venv/bin/python benchmarks/synth_learned_vs_itq.py "
             + " ".join(["--seeds", *map(str, a.seeds), "--bits", *map(str, a.bits), "--model", a.model,
                         *a.overrides]) + "`", "",
             "| method | bits | " + " | ".join(f"mAP@{k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    summary: dict[str, dict] = {}
    for bits in a.bits:
        for method in ("itq", a.model):
            vals = {k: [results[s][f"{method}-{bits}"]["map_at_k"][str(k)] for s in a.seeds] for k in ks}
            summary.setdefault(str(bits), {})[method] = vals
            lines.append(f"| {method} | {bits} | " + " | ".join(cell(vals[k]) for k in ks) + " |")
    lines += ["", "Learned model ahead of ITQ (mean over seeds) at:", ""]
    verdict = {}
    for bits in a.bits:
        s = summary[str(bits)]
        ahead = [k for k in ks if np.mean(s[a.model][k]) > np.mean(s["itq"][k])]
        verdict[bits] = ahead == ks
        lines.append(f"- {bits} bits: " + ("every K" if ahead == ks else f"K = {ahead or 'none'}; not at "
                                           f"{[k for k in ks if k not in ahead]}"))
    if seconds:
        lines += ["", "Seconds per run (data, baselines, training, encoding, evaluation): "
                  + ", ".join(f"seed {s}: {t:.0f}" for s, t in seconds.items())]
    Path(a.report).parent.mkdir(parents=True, exist_ok=True)
    Path(a.report).write_text("\n".join(lines) + "\n")
    Path(a.report).with_suffix(".json").write_text(json.dumps({"summary": summary, "seeds": a.seeds}, indent=1))
    print("\n".join(lines))
    return 0 if all(verdict.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
