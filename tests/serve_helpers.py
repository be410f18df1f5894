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


class FaultProxy:
    """A TCP proxy in front of a real server that can be told to fail, for storage-fault tests.

    Modes (``proxy.mode = ...``, changed at any time; open connections follow at their next bytes):

    * ``"pass"`` -- forward both ways;
    * ``"refuse"`` -- close every connection at once (the server sees nothing);
    * ``"drop_reply"`` -- forward the request, then close without passing on the server's reply (the write
      happened but the client sees an error: the lost-acknowledgement case);
    * ``"hold_reply"`` -- forward the request, hold the reply back until the mode changes.

    Args:
        upstream: ``(host, port)`` of the real server.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        import socket
        import threading

        self.upstream = upstream
        self.mode = "pass"
        self.replies_held = 0  # replies waiting in hold_reply (a test waits for one to kill its client)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src, dst, is_reply: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.mode == "refuse":
                    break
                if is_reply and self.mode in ("drop_reply", "hold_reply"):
                    # an interim "100 Continue" (S3 clients send Expect: 100-continue) goes through: without
                    # it the request body is never sent and the write could not land
                    while data.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in data:
                        head, data = data.split(b"\r\n\r\n", 1)
                        dst.sendall(head + b"\r\n\r\n")
                    if not data:
                        continue
                if is_reply and self.mode == "drop_reply":
                    break
                if is_reply and self.mode == "hold_reply":
                    self.replies_held += 1
                    while self.mode == "hold_reply" and not self._closed:
                        time.sleep(0.02)
                    self.replies_held -= 1
                    if self.mode != "pass":
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            import socket

            for s in (src, dst):
                try:  # shutdown first: it wakes the other direction's blocked recv and sends the FIN now
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
