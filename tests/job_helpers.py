"""Helpers shared by the kill/resume tests of training jobs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def sigkill_after_first_checkpoint(cmd: Sequence[str], pointer: Path, *, cwd: Path, env: dict[str, str],
                                   timeout: float = 180) -> int:
    """Start ``cmd``, SIGKILL it as soon as the loop's checkpoint pointer ``pointer`` (``ckpt/latest.json``)
    exists, and return the epoch that checkpoint holds.

    Fails the test if the job exits first or writes no checkpoint within ``timeout`` seconds.
    """
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not pointer.exists():
            assert proc.poll() is None, f"the job exited ({proc.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, f"no checkpoint within {timeout:.0f} s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return json.loads(pointer.read_text())["epoch"]
