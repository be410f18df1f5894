"""Helpers of the tests that talk to a deployed Serve application over HTTP."""

from __future__ import annotations

import time

import requests


def wait_healthy(base: str, headers: dict[str, str] | None = None, timeout_s: float = 60.0) -> str:
    """Poll ``GET base/healthz`` until it answers 200 (connection errors while the app starts are retried);
    ``base`` back. Fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/healthz", headers=headers, timeout=5).status_code == 200:
                return base
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} not healthy within {timeout_s:g} s")
