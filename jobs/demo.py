"""The demo pipeline as a job: ``python jobs/demo.py --config configs/demo.yaml [overrides]``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    from vhindex.app.jobs import demo_main

    return demo_main(argv, description=(__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
