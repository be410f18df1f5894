"""Entry point: the demo pipeline as a job (``python jobs/demo.py --config configs/demo.yaml [overrides]``).

Thin by design: parse config -> log the resolved config -> run -> exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vhindex.config import ConfigError, load_config
from vhindex.demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    logging.getLogger("jobs.demo").info("resolved config:\n%s", cfg.to_yaml())
    run_demo(cfg, out=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
