"""A private Ray head for tests: free ports, a unique temp dir, stopped by PID (never the machine-wide stop command).

Machine-wide stop commands (Ray's own, or killing by process name) would end other users' (or other test runs')
Ray clusters on a shared box. :class:`RayHead` therefore starts ``ray start --head`` with

* every listening port it can name picked free at runtime (GCS, dashboard, client server,
  dashboard agent, runtime-env agent, metrics, node manager, object manager),
* a short unique ``--temp-dir`` (Unix socket paths inside it must stay under ~107 chars),
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (node IP 127.0.0.1), ``RAY_AUTH_MODE=disabled`` (no token
  file in ``~/.ray``), ``RAY_USAGE_STATS_ENABLED=0`` and ``--dashboard-host=127.0.0.1``,
* the current interpreter's ``bin`` directory first on ``PATH`` -- so ``python`` in a
  ``ray job submit`` entrypoint is this venv's python,

and stops it by terminating the process trees of the processes whose command line contains its
temp dir (GCS, raylet, dashboard, agents, log monitor, workers, job drivers).

Usage as a fixture (the module also works outside pytest)::

    from tests.ray_head import ray_head  # noqa: F401  (re-export the fixture)

    def test_x(ray_head):
        out = ray_head.submit_job(["python", "-c", "print(1)"], working_dir=repo)
        assert out.returncode == 0

or directly: ``with RayHead.start(num_cpus=2) as head: ...``. Later Serve tests can use
:attr:`RayHead.address` with ``ray.init(address=head.address)`` and :meth:`RayHead.free_port`
for the Serve HTTP port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["RayHead", "free_ports", "ray_env", "ray_head"]

from cluster.runtime import LOOPBACK, free_ports, loopback_ray_env  # noqa: E402  (free_ports re-exported)

#: Environment every process touching the test cluster gets (see the module docstring).
RAY_TEST_ENV = {
    **loopback_ray_env(),
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` + :data:`RAY_TEST_ENV`, with this interpreter's bin dir first on ``PATH``.

    ``OMP_NUM_THREADS`` defaults to 1 (see the comment in the body).

    ``RAY_ADDRESS`` is removed so a command never attaches to some other cluster by accident.
    """
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_TEST_ENV)
    # One intra-op thread per process: on a small shared box torch's spinning OpenMP threads made a
    # tiny training run ~17x slower (6 s -> 103 s) while other processes used the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def _ray_cli() -> str:
    path = Path(sys.executable).parent / "ray"
    return str(path) if path.exists() else "ray"


class RayHead:
    """A running private Ray head node (see the module docstring).

    Attributes:
        temp_dir: the head's unique ``--temp-dir``.
        port: GCS port; :attr:`address` is ``127.0.0.1:<port>``.
        dashboard_port: dashboard / job-submission HTTP port; :attr:`dashboard_url`.
        num_cpus: CPUs the head advertises.
        env: the environment used for ``ray`` commands against this head.
    """

    def __init__(self, temp_dir: str, port: int, dashboard_port: int, num_cpus: int, env: dict[str, str]) -> None:
        self.temp_dir = temp_dir
        self.port = port
        self.dashboard_port = dashboard_port
        self.num_cpus = num_cpus
        self.env = env
        self._seen: set[int] = set()

    # ------------------------------------------------------------------ start / stop

    @classmethod
    def start(cls, num_cpus: int = 2, *, object_store_mb: int = 256, timeout: float = 90.0,
              attempts: int = 3, extra_args: Sequence[str] = ()) -> RayHead:
        """Start ``ray start --head`` on free ports with a fresh temp dir (retried on a port race).

        Raises:
            RuntimeError: with ``ray start``'s output when it fails ``attempts`` times.
        """
        last = ""
        for _ in range(attempts):
            temp_dir = tempfile.mkdtemp(prefix="vhr-", dir="/tmp")
            ports = free_ports(9)
            # RAY_ADDRESS in the raylet's environment reaches every worker: Ray-internal actors that
            # resolve "the" cluster (e.g. Ray Train's PlacementGroupCleaner, via the state API) would
            # otherwise auto-detect it -- ambiguous, or another cluster, when several run on the box.
            env = ray_env({"RAY_ADDRESS": f"127.0.0.1:{ports[0]}"})
            cmd = [
                _ray_cli(), "start", "--head", f"--num-cpus={num_cpus}", "--num-gpus=0",
                f"--port={ports[0]}", f"--node-ip-address={LOOPBACK}", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports[1]}",
                f"--ray-client-server-port={ports[2]}", f"--dashboard-agent-listen-port={ports[3]}",
                f"--dashboard-agent-grpc-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}",
                f"--metrics-export-port={ports[6]}", f"--node-manager-port={ports[7]}",
                f"--object-manager-port={ports[8]}", f"--object-store-memory={object_store_mb * 1024 * 1024}",
                f"--temp-dir={temp_dir}", "--disable-usage-stats", *extra_args,
            ]
            head = cls(temp_dir, ports[0], ports[1], num_cpus, ray_env())
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as err:
                head.stop()
                last = f"ray start timed out after {timeout}s: {err.stdout} {err.stderr}"
                continue
            head._remember()
            if proc.returncode == 0 and head._wait_dashboard(timeout):
                return head
            last = f"ray start exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            head.stop()
        raise RuntimeError(f"could not start a private Ray head after {attempts} attempts; last error:\n{last}")

    def _wait_dashboard(self, timeout: float) -> bool:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5) as resp:
                    if resp.status == 200:
                        return True
            time.sleep(0.5)
        return False

    def pids(self) -> set[int]:
        """PIDs of every live process of this head: cmdline mentions the temp dir, plus descendants."""
        import psutil

        found: set[int] = set()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info["cmdline"] or []
                if any(self.temp_dir in part for part in cmdline):
                    found.add(proc.pid)
        for pid in list(found | self._seen):
            with contextlib.suppress(psutil.Error):
                found.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        found.discard(os.getpid())
        return {pid for pid in found if _alive(pid)}

    def _remember(self) -> None:
        self._seen |= self.pids()

    def stop(self, timeout: float = 4.0) -> None:
        """Terminate (then kill) every process of this head, and remove its temp dir."""
        import psutil

        self._remember()
        procs = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        # processes started while we were terminating (a raylet restarting a worker)
        late = [psutil.Process(pid) for pid in self.pids() if _alive(pid)]
        for p in late:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(late, timeout=5)
        self._forget_current_cluster()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _forget_current_cluster(self) -> None:
        """Remove a ``ray_current_cluster`` file that points at this head (as the machine-wide stop command would)."""
        for path in (Path(self.temp_dir) / "ray_current_cluster", Path("/tmp/ray/ray_current_cluster")):
            with contextlib.suppress(OSError):
                if path.read_text().strip() == self.address:
                    path.unlink()

    def __enter__(self) -> RayHead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ use

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)``."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Job-submission (dashboard) URL for ``ray job submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @staticmethod
    def free_port() -> int:
        """One free port on 127.0.0.1 (e.g. for a Serve HTTP proxy)."""
        return free_ports(1)[0]

    def ray(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """Run ``ray <args>`` with this head's environment (output captured as text)."""
        result = subprocess.run([_ray_cli(), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        self._remember()
        return result

    def submit_job(self, entrypoint: Sequence[str], *, working_dir: str | os.PathLike, timeout: float = 300.0,
                   submission_id: str | None = None, extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """``ray job submit --address <dashboard> --working-dir <dir> [...] -- <entrypoint>`` (waits, tails logs).

        The CLI's exit code is 0 whatever the job's outcome in some Ray versions, so check the
        output (``Job '...' succeeded``) or :meth:`job_status`.
        """
        args = ["job", "submit", "--address", self.dashboard_url, "--working-dir", str(working_dir)]
        if submission_id:
            args += ["--submission-id", submission_id]
        return self.ray(*args, *extra_args, "--", *entrypoint, timeout=timeout)

    def job_status(self, submission_id: str) -> str:
        """The job's status word (``SUCCEEDED``, ``FAILED``, ``RUNNING``, ...) from the job API."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/{submission_id}", timeout=10) as resp:
            return str(json.load(resp)["status"])


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A private Ray head (2 CPUs) for the module's tests; stopped by PID afterwards.

    Skips when Ray or psutil is not installed. After the module, asserts that no process of the
    head survived.
    """
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    head = RayHead.start(num_cpus=2)
    try:
        yield head
    finally:
        head.stop()
    left = head.pids()
    assert not left, f"processes of the test Ray head survived stop(): {sorted(left)}"
