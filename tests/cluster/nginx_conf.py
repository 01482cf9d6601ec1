"""The shipped nginx config (deploy/nginx/nginx.conf), run on loopback by the tests.

Tests must exercise the settings users deploy, not a copy that drifts: the template is read
from the repository and only what differs between deployments is replaced — the replicas'
addresses (`server replica-N:50051 …;` lines, their parameters kept), the listen address, and
the paths nginx writes (pid, logs, temp folders), which go under a folder of the test's own so
nginx runs from a temporary folder, in the foreground, with no system path touched.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"

# `server replica-1:50051 max_fails=1 fail_timeout=2s;` inside the upstream block.
_SERVER_LINE = re.compile(r"^(?P<indent>[ \t]*)server[ \t]+replica-\d+:50051(?P<params>[^;\n]*);[ \t]*\n", re.M)
_LISTEN = re.compile(r"^(?P<indent>[ \t]*)listen[ \t]+\S+(?P<params>[^;\n]*);", re.M)
_DROPPED = re.compile(r"^[ \t]*(pid|error_log|daemon)[ \t][^;\n]*;[ \t]*\n", re.M)
_ACCESS_LOG = re.compile(r"^(?P<indent>[ \t]*)access_log[ \t]+\S+(?P<params>[^;\n]*);", re.M)
# Every temp folder nginx creates at start (for its compiled-in modules), not only gRPC's.
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def with_upstreams(template_text: str, upstreams: list[str]) -> str:
    """The template with its replica `server` lines replaced by one per address (host:port)."""
    found = list(_SERVER_LINE.finditer(template_text))
    assert found, "no `server replica-N:50051 …;` line in the nginx template"
    assert upstreams, "an upstream needs at least one server"
    first = found[0]
    lines = "".join(f"{first['indent']}server {address}{first['params']};\n" for address in upstreams)
    text = template_text[: first.start()] + lines + template_text[found[-1].end() :]
    # The replaced lines must have been one run (nothing of the config between them is lost).
    between = template_text[first.start() : found[-1].end()]
    assert "".join(m.group(0) for m in found) == between, "the replica server lines must be consecutive"
    return text


def render_nginx_conf(template_text: str, upstreams: list[str], listen_port: int, prefix_dir: Path) -> str:
    """The template made runnable on 127.0.0.1:listen_port in front of `upstreams`.

    pid, logs and temp folders go under prefix_dir (created by nginx; the folder itself must
    exist); `daemon off`, so nginx stays the process the caller started. Everything else —
    hashing, failure detection, timeouts, retries — is the template's own.
    """
    text = with_upstreams(template_text, upstreams)
    text, listens = _LISTEN.subn(rf"\g<indent>listen 127.0.0.1:{listen_port}\g<params>;", text)
    assert listens == 1, f"expected one listen directive, found {listens}"
    prefix = prefix_dir.resolve()
    text = _DROPPED.sub("", text)
    text = _ACCESS_LOG.sub(lambda m: f"{m['indent']}access_log {prefix}/access.log{m['params']};", text)
    head = f"daemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
    temp = "".join(f"    {name}_temp_path {prefix}/{name}_temp;\n" for name in _TEMP_PATHS)
    text, https = re.subn(r"^http[ \t]*\{[ \t]*\n", lambda m: m.group(0) + temp, text, flags=re.M)
    assert https == 1, "expected one http block"
    return head + text


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert found, "nginx is not installed: `apt-get install nginx-light` (Debian; make system-deps)"
    return found


class Nginx:
    """nginx with the shipped settings in front of `upstreams`, on a port of its own; `reload` changes the ring."""

    def __init__(self, upstreams: list[str], prefix_dir: Path, listen_port: int | None = None) -> None:
        self.port = listen_port or _free_port()
        self.prefix_dir = prefix_dir
        prefix_dir.mkdir(parents=True, exist_ok=True)
        self.conf = prefix_dir / "nginx.conf"
        self._write(upstreams)
        # -e: the log for messages before the config is read (official builds default to /var/log).
        argv = [nginx_binary(), "-p", str(prefix_dir), "-e", str(prefix_dir / "error.log"), "-c", str(self.conf)]
        with open(prefix_dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_listening(self.proc, self.port, prefix_dir)
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reload(self, upstreams: list[str]) -> None:
        """A new ring, as an operator changes it: new config, SIGHUP (new workers; old ones finish their calls)."""
        self._write(upstreams)
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # nginx starts the new workers before it retires the old ones
        assert self.proc.poll() is None, f"nginx exited on reload: {self.log()}"

    def log(self) -> str:
        path = self.prefix_dir / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: open calls finish
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _write(self, upstreams: list[str]) -> None:
        self.conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), upstreams, self.port, self.prefix_dir))


@contextlib.contextmanager
def running_nginx(upstreams: list[str], prefix_dir: Path, listen_port: int | None = None) -> Iterator[int]:
    """nginx with the shipped settings in front of `upstreams`; yields its port, stops it after."""
    nginx = Nginx(upstreams, prefix_dir, listen_port)
    try:
        yield nginx.port
    finally:
        nginx.stop()


def _wait_listening(proc: subprocess.Popen[bytes], port: int, prefix_dir: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (prefix_dir / "error.log").read_text(errors="replace") if (prefix_dir / "error.log").exists() else ""
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nginx not listening on {port} after {timeout}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
