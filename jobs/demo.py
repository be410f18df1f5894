"""Entry point: the demo pipeline as a job (``python jobs/demo.py --config configs/demo.yaml [overrides]``).

Thin by design: parse config -> log the resolved config -> run -> exit code.
"""

from __future__ import annotations

import sys

from vhindex.config import load_job_config
from vhindex.demo import run_demo


def main(argv: list[str] | None = None) -> int:
    cfg = load_job_config(argv, default_config="configs/demo.yaml", description=__doc__.splitlines()[0], job="demo")
    run_demo(cfg, out=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
