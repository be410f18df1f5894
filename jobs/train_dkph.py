"""Train a hashing student (DKPH by default): teacher -> graph -> student -> codes -> mAP.

``python jobs/train_dkph.py --config configs/train/fcvid.yaml model.bits=16 run.output_dir=... data.train=...``
-- the same as ``vhindex train``; under ``ray job submit --working-dir . -- python jobs/train_dkph.py ...``
both training stages run on Ray Train (``train.backend``). Give ``run.output_dir`` and data paths as
absolute paths or URLs there. Re-running the same command resumes. Exit codes: 0 success, 1 training
failure, 2 configuration or data-check error (see :func:`vhindex.app.jobs.run_training`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    from vhindex.app.jobs import train_main

    return train_main(argv, description=(__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
