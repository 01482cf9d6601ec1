"""A Docker engine of the tests' own: private socket, data root and PID, gone without a trace after.

`dockerd` runs from a temporary folder (socket, data root, exec root, PID file, log) in a
session of its own, so nothing it does reaches the machine's own Docker, if any. It starts
with `--iptables=false --ip-forward=false`: nothing in these tests needs NAT (image builds use
the host's network, the compose stack talks on its own bridge, the tests reach containers on
ports published on 127.0.0.1), so the engine leaves the host's firewall and forwarding alone
and no container can send traffic off the machine. What it could still change is recorded
before it starts — the iptables rules, `net.ipv4.ip_forward`, the network links — and put back
after it is stopped by its PID; then its mounts are undone and the folder removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
START_TIMEOUT_S = 60.0


class EngineUnavailable(Exception):
    """The engine cannot run on this machine; the message says why in a sentence."""


def progress(message: str) -> None:
    """One line of progress on the terminal (make test-docker runs pytest with -s)."""
    print(f"[docker {time.strftime('%H:%M:%S')}] {message}", flush=True)


def docker_client() -> str:
    """Debian's client beside Debian's dockerd when both are there; any `docker` otherwise."""
    debian = Path("/usr/bin/docker")
    if debian.exists() and Path("/usr/sbin/dockerd").exists():
        return str(debian)
    found = shutil.which("docker")
    if found is None:
        raise EngineUnavailable("no docker client: `make docker-deps` installs Debian's docker.io")
    return found


# -- what the engine could change on the host ------------------------------------------------------
def _capture(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def _rules(text: str) -> list[str]:
    """iptables-save output without its comments and counters, which change on their own."""
    return [
        line.split(" [", 1)[0] if line.startswith(":") else line
        for line in text.splitlines()
        if line and not line.startswith("#")
    ]


def _chains(text: str) -> dict[str, list[str]]:
    """table → its chains, from iptables-save output."""
    tables: dict[str, list[str]] = {}
    table = ""
    for line in _rules(text):
        if line.startswith("*"):
            table = line[1:]
            tables[table] = []
        elif line.startswith(":") and table:
            tables[table].append(line[1:].split()[0])
    return tables


def _links() -> set[str]:
    out = _capture(["ip", "-o", "link", "show"])
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


@dataclass
class HostNetwork:
    """The host's network state the engine could touch, recorded before it starts."""

    iptables: str = ""
    ip6tables: str = ""
    ip_forward: str = ""
    links: set[str] = field(default_factory=set)

    @classmethod
    def record(cls) -> HostNetwork:
        return cls(
            iptables=_capture(["iptables-save"]),
            ip6tables=_capture(["ip6tables-save"]),
            ip_forward=IP_FORWARD.read_text().strip() if IP_FORWARD.exists() else "",
            links=_links(),
        )

    def put_back(self) -> list[str]:
        """Restore what differs; returns what had changed, for the log."""
        changed = []
        if self.ip_forward and IP_FORWARD.read_text().strip() != self.ip_forward:
            IP_FORWARD.write_text(self.ip_forward + "\n")
            changed.append(f"net.ipv4.ip_forward back to {self.ip_forward}")
        for tool, saved in (("iptables", self.iptables), ("ip6tables", self.ip6tables)):
            now = _capture([f"{tool}-save"])
            if _rules(now) == _rules(saved):
                continue
            # Tables the engine created are emptied; the ones that existed get their saved rules.
            before = set(_chains(saved))
            for table, chains in _chains(now).items():
                if table in before:
                    continue
                for args in (["-F"], ["-X"], *(["-P", chain, "ACCEPT"] for chain in chains)):
                    subprocess.run([tool, "-t", table, *args], check=False, capture_output=True)
            if saved:
                subprocess.run([f"{tool}-restore"], input=saved, text=True, check=False, capture_output=True)
            changed.append(f"{tool} rules put back")
        for link in sorted(_links() - self.links):
            if link == "docker0" or link.startswith(("br-", "veth")):
                subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
                changed.append(f"link {link} removed")
        return changed


# -- the engine ------------------------------------------------------------------------------------
@dataclass
class Engine:
    root: Path
    proc: subprocess.Popen[bytes]
    client: str
    host: HostNetwork

    @property
    def env(self) -> dict[str, str]:
        """For every docker / docker-compose command: this engine, the classic builder."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.root / 'docker.sock'}", "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.client, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def log(self, lines: int = 40) -> str:
        text = (self.root / "dockerd.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop dockerd by its PID (it stops its containers and its containerd), then clean up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        changed = self.host.put_back()
        _unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        progress(
            f"engine (PID {self.proc.pid}) stopped; {self.root} removed; "
            + ("host: " + ", ".join(changed) if changed else "host network unchanged (iptables, ip_forward, links)")
        )


def _unmount_below(root: Path) -> None:
    """Mounts the engine may leave (overlay layers, netns files), deepest first."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def start_engine() -> Engine:
    """A running engine of our own, or EngineUnavailable saying why it cannot start."""
    if os.geteuid() != 0:
        raise EngineUnavailable("dockerd needs root, and these tests run as a user")
    # SEQPREDICT_TEST_DOCKERD: another daemon binary (tests/test_docker_skips.py gives one that fails).
    dockerd = os.environ.get("SEQPREDICT_TEST_DOCKERD") or shutil.which("dockerd")
    dockerd = dockerd or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)
    if dockerd is None:
        raise EngineUnavailable("dockerd is not installed: `make docker-deps` installs Debian's docker.io")
    client = docker_client()
    host = HostNetwork.record()
    root = Path(tempfile.mkdtemp(prefix="seqpredict-dockerd-"))
    argv = [
        dockerd,
        f"--host=unix://{root / 'docker.sock'}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        "--iptables=false",
        "--ip-forward=false",
    ]
    with open(root / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(root, proc, client, host)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = engine.log(15)
            engine.stop()
            raise EngineUnavailable(f"dockerd exited with {proc.returncode} at start-up:\n{reason}")
        if engine.docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False).returncode == 0:
            version = engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
            progress(f"engine {version} up: PID {proc.pid}, socket and data root under {root}")
            return engine
        time.sleep(0.2)
    reason = engine.log(15)
    engine.stop()
    raise EngineUnavailable(f"dockerd did not answer within {START_TIMEOUT_S:.0f}s:\n{reason}")


@contextlib.contextmanager
def running_engine() -> Iterator[Engine]:
    engine = start_engine()
    try:
        yield engine
    finally:
        engine.stop()
