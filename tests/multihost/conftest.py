"""A small network of test hosts on this machine: Linux network namespaces joined by veth
pairs on a bridge that lives in a namespace of its own.

Each test host is a network namespace with one interface (``eth0``, ``10.77.0.N/24``) and
its loopback; every process started on it also gets its own UTS namespace (its own
hostname) and its own tmpfs on ``/dev/shm``, so two test hosts share neither a hostname
nor shared memory, and the same-host zero-copy path cannot be taken by accident. The
bridge's namespace has no link to the machine's own network namespace, so no packet of a
test can leave the namespaces made here. Everything is removed afterwards, also when a
test fails.

Needs root, ``ip`` (iproute2) and ``unshare`` (util-linux); skips with the reason
elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUBNET = "10.77.0"
SHM_SIZE = "1g"
SCHEDULER_PORT = 8786
HTTP_PORT = 8000
DASHBOARD_PORT = 8787  # the scheduler's Prometheus page (/metrics), on host 1's loopback


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "multi-host tests make network namespaces: they need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"multi-host tests need `{tool}`"
    probe = f"mcprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as e:
        return f"cannot make a network namespace here: {e}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Host:
    """One test host: its namespace, name and address."""

    netns: str
    name: str
    ip: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run on this host: in its network namespace, under its own hostname,
        with a private /dev/shm. (``ip netns exec`` already gives the command a mount
        namespace of its own, whose mounts do not propagate back.)"""
        setup = (
            f"hostname {self.name} && mount -t tmpfs -o size={SHM_SIZE} mc-shm /dev/shm"
            ' && exec "$@"'
        )
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            setup,
            "sh",
            *cmd,
        ]

    def start(
        self, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` on this host in the background (its own process group), its
        output to ``log``."""
        with open(log, "wb") as f:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                self.argv(cmd),
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on this host to completion (raises on a timeout)."""
        return subprocess.run(
            self.argv(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def link(self, up: bool) -> None:
        """Take this host's interface down or up (a cable pulled, or plugged back)."""
        _ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")


class TestNetwork:
    """``n`` hosts on one bridge. Use as a context manager; ``close`` removes it all."""

    __test__ = False  # not a test class

    def __init__(self, n: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.switch = f"mcsw-{tag}"
        self.hosts: list[Host] = []
        _ip("netns", "add", self.switch)
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i in range(1, n + 1):
                host = Host(f"mch{i}-{tag}", f"mc-host{i}", f"{SUBNET}.{i}")
                _ip("netns", "add", host.netns)
                self.hosts.append(host)
                a, b = f"mc{tag}h{i}", f"mc{tag}p{i}"  # at most 15 characters
                _ip("link", "add", a, "type", "veth", "peer", "name", b)
                _ip("link", "set", a, "netns", host.netns)
                _ip("link", "set", b, "netns", self.switch)
                _ip("-n", host.netns, "link", "set", a, "name", "eth0")
                _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
                _ip("-n", host.netns, "link", "set", "eth0", "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
                _ip("-n", self.switch, "link", "set", b, "master", "br0")
                _ip("-n", self.switch, "link", "set", b, "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TestNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started on a host (SIGTERM, then SIGKILL after 10 s), then
        delete the namespaces (their interfaces go with them)."""
        procs = [p for h in self.hosts for p in h.procs if p.poll() is None]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        for ns in [h.netns for h in self.hosts] + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def network_of(tmp_path: Path) -> Iterator[type[TestNetwork]]:
    """Factory of test networks, each removed at the end of the test."""
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    made: list[TestNetwork] = []

    class _Made(TestNetwork):
        __test__ = False

        def __init__(self, n: int) -> None:
            super().__init__(n)
            made.append(self)

    try:
        yield _Made
    finally:
        for net in made:
            net.close()


def tls_flags(tmp_path: Path) -> list[str]:
    """A self-signed certificate that is also its CA (as ``Security.temporary()`` makes),
    written as PEM files: the ``--tls-*`` flags of every process of a test cluster (its
    scheduler needs ``--protocol tls`` too; docs/security.md)."""
    from distributed.security import Security

    sec = Security.temporary()
    cert, key = tmp_path / "cluster.pem", tmp_path / "cluster.key"
    cert.write_text(sec.tls_ca_file)
    key.write_text(sec.tls_scheduler_key)
    key.chmod(0o600)
    return ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]


class TestCluster:
    """A mooncake cluster on a test network: ``dask scheduler`` (TLS) on host 1, started
    here; workers (:meth:`worker`) and the HTTP server (:meth:`serve`, also on host 1)
    started by the test. Every process logs to a file under ``tmp_path``; :meth:`logs`
    gathers their tails for a failure message. The network's ``close`` stops them all.

    Args:
        net: the test network (host 1 is the scheduler's).
        tmp_path: where the TLS files and the logs go.
        env: extra environment of the scheduler (e.g. its ``worker-ttl``).
        dashboard: serve the scheduler's dashboard (and its ``/metrics``) on host 1's
            loopback at ``DASHBOARD_PORT``.
    """

    __test__ = False  # not a test class

    def __init__(
        self,
        net: TestNetwork,
        tmp_path: Path,
        env: dict[str, str] | None = None,
        dashboard: bool = True,
    ) -> None:
        self.net, self.tmp_path = net, tmp_path
        self.host = net.hosts[0]
        self.address = f"tls://{self.host.ip}:{SCHEDULER_PORT}"
        self.tls = tls_flags(tmp_path)
        self.scheduler_http = f"http://127.0.0.1:{DASHBOARD_PORT}"
        self.server_http = f"http://127.0.0.1:{HTTP_PORT}"
        where = (
            ["--dashboard-address", f"127.0.0.1:{DASHBOARD_PORT}"]
            if dashboard
            else ["--no-dashboard"]
        )
        self.host.start(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                self.host.ip,
                "--port",
                str(SCHEDULER_PORT),
                "--protocol",
                "tls",
                *self.tls,
                *where,
            ],
            tmp_path / "scheduler.log",
            env=env,
        )

    def worker(self, host: Host, role: str, log: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``mooncake worker --role ROLE`` on ``host``."""
        return host.start(
            [
                sys.executable,
                "-m",
                "mooncake.cli",
                "worker",
                self.address,
                "--role",
                role,
                "--nthreads",
                "2",
                *self.tls,
            ],
            self.tmp_path / f"{log or f'worker-{role}-{host.name}'}.log",
        )

    def serve(self, model: Path) -> subprocess.Popen[bytes]:
        """Start ``mooncake serve --scheduler`` on host 1 (model name ``m``, loopback)."""
        return self.host.start(
            [
                sys.executable,
                "-m",
                "mooncake.cli",
                "serve",
                "--model",
                str(model),
                "--served-model-name",
                "m",
                "--scheduler",
                self.address,
                "--host",
                "127.0.0.1",
                "--port",
                str(HTTP_PORT),
                "--log-level",
                "warning",
                *self.tls,
            ],
            self.tmp_path / "server.log",
        )

    def logs(self) -> str:
        """The last 3000 characters of every process's log."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp_path.glob("*.log"))
        )


def metric_sum(metrics: str, name: str, label: str | None = None) -> float:
    """Sum of a metric's samples in a Prometheus text page (a counter with or without
    its ``_total`` suffix), only those carrying ``label`` (e.g. ``path="tcp"``) if given."""
    total = 0.0
    pattern = rf"^{re.escape(name)}(?:_total)?(?:\{{([^}}]*)\}})? ([0-9.e+-]+)$"
    for m in re.finditer(pattern, metrics, re.M):
        if label is None or label in (m.group(1) or ""):
            total += float(m.group(2))
    return total
