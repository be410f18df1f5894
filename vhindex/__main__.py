"""``python -m vhindex``: the ``vhindex`` command line (:mod:`vhindex.app.cli`)."""

import sys

from vhindex.app.cli import main

sys.exit(main())
