"""Alignment accuracy on the near-duplicate benchmark: does the reported segment overlap the true one?

For every ``trim``, ``speed`` and ``crop`` variant of the near-duplicate set (``vhindex bench quality``
built it), the variant is the query and its family's ``original`` the database video. The true segment
pair comes from the variant's parameters in ``groups.json``: a trim keeps source frames
``[start, start + length)``; a speed change shows source frame ``floor(i * speed)`` as frame ``i``, so
the whole query maps onto the source's first ``frames * speed`` frames; a crop maps whole onto whole.

Frame codes: ``--bits``-bit ITQ fitted on single frames of the whole set (UTS's frame hasher, as the
benchmark's frame-level rows use it), frame times from the uniform sampling of the extraction
(``floor((i + 0.5) N / M)``, at the clip's frame rate). The top segment of
:func:`vhindex.index.align.align_codes` is scored by 1-D IoU on both sides; a variant counts as
aligned when both IoUs are at least ``--iou`` (0.5).

    .venv/bin/python benchmarks/neardup_alignment.py --report benchmarks/results/neardup_alignment.md
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from fractions import Fraction
from pathlib import Path

import numpy as np


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """1-D intersection over union of two intervals."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="bench-work/quality/neardup")
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default="benchmarks/results/neardup_alignment.md")
    args = ap.parse_args()

    from vhindex.benchdata.quality import _read_features
    from vhindex.data import FrameDataset
    from vhindex.features.video import uniform_indices
    from vhindex.index.align import align_codes
    from vhindex.models import build_model

    groups = json.loads((Path(args.work) / "videos" / "groups.json").read_text())
    ds = FrameDataset.open(f"{args.work}/features/all")
    ids = ds.read_video_ids()
    feats = _read_features(ds).astype(np.float32)
    n, m, d = feats.shape
    model = build_model("itq", args.bits)
    model.fit(lambda: iter([feats.reshape(-1, 1, d)]), seed=args.seed)
    codes = model.encode_packed(feats.reshape(-1, 1, d)).reshape(n, m, -1)
    pos = {v: i for i, v in enumerate(ids)}

    rows = []
    for vid, g in sorted(groups.items()):
        if g["variant"] not in ("trim", "speed", "crop") or vid not in pos:
            continue
        orig = f"{vid.split('__', 1)[0]}__original"  # the variant's canonical source, normalised
        src = groups[orig]["params"]
        fps = float(Fraction(src["fps"]))
        n_src = int(src["frames"])
        p = g["params"]
        if g["variant"] == "trim":
            n_q = int(p["length"])
            truth_q, truth_d = (0.0, n_q / fps), (p["start"] / fps, (p["start"] + n_q) / fps)
        elif g["variant"] == "speed":
            n_q = int(p["frames"])
            truth_q, truth_d = (0.0, n_q / fps), (0.0, min(n_src, n_q * p["speed"]) / fps)
        else:
            n_q = n_src
            truth_q, truth_d = (0.0, n_q / fps), (0.0, n_src / fps)
        db_times = (uniform_indices(n_src, m) + 0.5) / fps
        q_times = (uniform_indices(n_q, m) + 0.5) / fps
        segs = align_codes(codes[pos[vid]], q_times, codes[pos[orig]], db_times, args.bits)
        if segs:
            s = segs[0]
            iq, idb = iou((s.query_start, s.query_end), truth_q), iou((s.db_start, s.db_end), truth_d)
            rows.append((vid, g["variant"], iq, idb, s.speed, p.get("speed"), s.score))
        else:
            rows.append((vid, g["variant"], 0.0, 0.0, None, p.get("speed"), 0.0))
    lines = [f"# Alignment accuracy on the near-duplicate set ({date.today().isoformat()})", "",
             f"`.venv/bin/python benchmarks/neardup_alignment.py --bits {args.bits}` -- ITQ-{args.bits} frame codes, "
             f"M = {m} frames per video, query = the variant, database = its family's original; aligned = IoU >= "
             f"{args.iou} on both sides.", "",
             "| variant | videos | aligned | mean IoU query / database |", "|---|---:|---:|---:|"]
    for variant in ("trim", "speed", "crop"):
        r = [x for x in rows if x[1] == variant]
        ok = sum(1 for x in r if x[2] >= args.iou and x[3] >= args.iou)
        lines.append(f"| {variant} | {len(r)} | **{ok / len(r):.1%}** ({ok}) | {np.mean([x[2] for x in r]):.3f} / "
                     f"{np.mean([x[3] for x in r]):.3f} |")
    ts = [x for x in rows if x[1] in ("trim", "speed")]
    ok = sum(1 for x in ts if x[2] >= args.iou and x[3] >= args.iou)
    lines += ["", f"trim + speed: **{ok / len(ts):.1%}** aligned ({ok} of {len(ts)}).", "",
              "Speed variants, true speed vs found: " + ", ".join(
                  f"{x[5]:.2f}->{x[4]:.2f}" if x[4] is not None else f"{x[5]:.2f}->none" for x in rows
                  if x[1] == "speed"), "",
              "Misses: " + (", ".join(f"{x[0]} (IoU {x[2]:.2f} / {x[3]:.2f})" for x in rows
                                      if not (x[2] >= args.iou and x[3] >= args.iou)) or "none")]
    Path(args.report).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
