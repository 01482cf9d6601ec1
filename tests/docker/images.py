"""The images the tests need, on an engine that may not reach Docker Hub.

Each image the Dockerfile or the compose file names is pulled when the registry answers. When
it does not, a stand-in is made from Debian's packages under the same tag, so the project's
own files run unchanged:

- the Python base (`python:3.11-slim-bookworm`): `mmdebstrap` of bookworm with python3 and venv,
  `docker import`ed. The host's CA bundle goes in with it: pip inside the build reaches PyPI as
  the host does, through whatever TLS proxy the host trusts.
- Prometheus (`prom/prometheus:…`): Debian's prometheus binary on that base, laid out like the
  official image (entrypoint, user nobody, /prometheus).
- nginx and Redis for the `cluster` profile (`nginx:1.22.1`, `redis:7.0.15`, the versions
  bookworm ships): a second `mmdebstrap` of bookworm with nginx-light and redis-server, imported
  once and given each image's command, user and folders.
- the seqpredict image itself is always built from the repository, with torch's CPU wheel
  handed over in a wheel folder (`pip download --no-deps torch==2.13.0`, as `make install` gets
  it), never from an index that could serve the CUDA build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.deployfiles import ROOT, compose_config, require_tool
from tests.docker.engine import Engine, EngineUnavailable, progress

CACHE = ROOT / "build" / "docker-cache"  # kept between runs (build/ is ignored by git and docker)
WHEELS = ROOT / "deploy" / "image" / "wheels"  # the Dockerfile's default WHEELS folder
IMAGE = "seqpredict:latest"  # the tag docker-compose.yml runs
PULL_TIMEOUT_S = 120
STANDIN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"


def dockerfile_base() -> str:
    """The Dockerfile's PYTHON_IMAGE default: the tag a stand-in must carry."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile has no ARG PYTHON_IMAGE=… default"
    return match.group(1)


def pulled(engine: Engine, tag: str) -> bool:
    """Pull from the registry; False (with the reason printed) when it cannot be reached."""
    try:
        done = engine.docker("pull", tag, timeout=PULL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        progress(f"cannot pull {tag}: no answer in {PULL_TIMEOUT_S}s")
        return False
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        progress(f"cannot pull {tag}: {reason}")
    return done.returncode == 0


def run_with_progress(
    argv: list[str], log: Path, show: re.Pattern[str], timeout: float, env: dict[str, str] | None = None
) -> int:
    """Run a long command, its whole output to `log`, the lines matching `show` to the terminal."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if show.search(line):
                progress(f"  {line.rstrip()[:150]}  ({time.monotonic() - started:.0f}s)")
            if time.monotonic() - started > timeout:
                proc.kill()
        return proc.wait()


# -- the Python base -------------------------------------------------------------------------------
def standin_rootfs(name: str = "python3", packages: str = STANDIN_PACKAGES, host_ca: bool = True) -> Path:
    """bookworm with `packages` (python3 + venv by default) as a tarball, made once and kept in the cache.

    `host_ca`: the host's CA bundle replaces the image's (needs ca-certificates among the packages).
    """
    tarball = CACHE / f"standin-{name}-bookworm.tar"
    if tarball.exists():
        progress(f"stand-in {name}: reusing {tarball.relative_to(ROOT)} (delete it to rebuild)")
        return tarball
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise EngineUnavailable(f"the {name} image cannot be pulled and mmdebstrap is missing (`make docker-deps`)")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name("partial-" + tarball.name)  # mmdebstrap picks its output format by suffix
    progress(f"stand-in {name}: mmdebstrap bookworm with {packages} (about a minute)")
    argv = [
        mmdebstrap,
        "--variant=minbase",
        f"--include={packages}",
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
        # The host's CA bundle: pip in the image build reaches PyPI the way the host does.
        *(["--customize-hook=upload /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"] * host_ca),
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        "bookworm",
        str(partial),
    ]
    log = CACHE / f"mmdebstrap-{name}.log"
    code = run_with_progress(argv, log, re.compile(r"^I: (retrieving|installing|success)"), 900)
    if code != 0:
        raise AssertionError(f"mmdebstrap failed ({code}); see {log}")
    partial.rename(tarball)
    return tarball


def ensure_base(engine: Engine) -> str:
    """The Dockerfile's base image, pulled or stood in for; returns how it was obtained."""
    tag = dockerfile_base()
    if pulled(engine, tag):
        return f"{tag} pulled"
    tarball = standin_rootfs()
    engine.docker(
        "import",
        "--change=ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change=ENV LANG=C.UTF-8",
        '--change=CMD ["python3"]',
        str(tarball),
        tag,
    )
    return f"{tag} stood in for by Debian bookworm's python3 (mmdebstrap, docker import)"


# -- torch's CPU wheel ------------------------------------------------------------------------------
def torch_cpu_wheel() -> Path:
    """torch 2.13.0's CPU wheel in the Dockerfile's wheel folder, fetched the way `make install` does."""
    found = sorted(WHEELS.glob("torch-2.13.0+cpu-*.whl"))
    if not found:
        progress("torch's CPU wheel: pip download --no-deps torch==2.13.0")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(WHEELS), "torch==2.13.0"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, f"pip download torch==2.13.0 failed:\n{done.stderr}"
        for wheel in WHEELS.glob("torch-*.whl"):
            if "+cpu" not in wheel.name:
                wheel.unlink()  # the CUDA build: never handed to the image build
        found = sorted(WHEELS.glob("torch-2.13.0+cpu-*.whl"))
        assert found, (
            "pip found no CPU build of torch 2.13.0; put torch-2.13.0+cpu…whl into deploy/image/wheels "
            "(pip download --no-deps torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
        )
    return found[0]


# -- the seqpredict image ---------------------------------------------------------------------------
def build_image(engine: Engine, log: Path, *build_args: str, context: Path = ROOT, tag: str = IMAGE) -> int:
    """`docker build` of the repository's Dockerfile; returns the exit code, the output is in `log`.

    --network host: this engine has no NAT (engine.py), and pip in the build reaches the indexes
    the way the host does.
    """
    argv = [engine.client, "build", "--network=host", "--force-rm", "-f", str(ROOT / "Dockerfile"), "-t", tag]
    argv += [f"--build-arg={arg}" for arg in build_args]
    show = re.compile(r"^Step \d+/\d+ : (FROM|RUN|COPY)|^check_cpu_torch|^slim: |^ +[\d.]+ MB  |^Successfully built")
    return run_with_progress([*argv, str(context)], log, show, 1800, engine.env)


# -- Prometheus -------------------------------------------------------------------------------------
PROMETHEUS_DOCKERFILE = """\
FROM {base}
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
"""


def ensure_prometheus(engine: Engine, workdir: Path) -> str:
    """The compose file's Prometheus image, pulled or stood in for by Debian's prometheus."""
    tag = compose_config()["services"]["prometheus"]["image"]
    if pulled(engine, tag):
        return f"{tag} pulled"
    binary = require_tool("prometheus", "prometheus")
    context = workdir / "prometheus-image"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, context / "prometheus")
    (context / "Dockerfile").write_text(PROMETHEUS_DOCKERFILE.format(base=dockerfile_base()))
    engine.docker("build", "--force-rm", "-q", "-t", tag, str(context))
    done = subprocess.run([binary, "--version"], capture_output=True, text=True)
    version = ((done.stdout or done.stderr).splitlines() or ["prometheus"])[0].split(" (")[0]
    return f"{tag} stood in for by Debian's {version} (same entrypoint, user and /prometheus)"


# -- nginx and Redis (the `cluster` profile) --------------------------------------------------------
SERVICES_PACKAGES = "nginx-light,redis-server"
SERVICES_BASE = "seqpredict-test/bookworm-nginx-redis:latest"  # never pushed; only on this engine
# Laid out like the official images as far as the compose file relies on it: nginx in the
# foreground with its logs on the container's stdout/stderr; Redis as its own user in /data.
NGINX_DOCKERFILE = """\
FROM {base}
RUN ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""
REDIS_DOCKERFILE = """\
FROM {base}
RUN mkdir -p /data && chown redis:redis /data
VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
"""


def debian_version(engine: Engine, image: str, package: str) -> str:
    done = engine.docker("run", "--rm", "--entrypoint=dpkg-query", image, "-W", "-f=${Version}", package)
    return done.stdout.strip()


def ensure_nginx_and_redis(engine: Engine, workdir: Path) -> list[str]:
    """The cluster profile's nginx and Redis images, pulled or stood in for by Debian's packages."""
    services = compose_config()["services"]
    wanted = {"nginx": services["nginx"]["image"], "redis": services["redis"]["image"]}
    missing = {name: tag for name, tag in wanted.items() if not pulled(engine, tag)}
    how = [f"{tag} pulled" for name, tag in wanted.items() if name not in missing]
    if not missing:
        return how
    tarball = standin_rootfs("nginx-redis", SERVICES_PACKAGES, host_ca=False)  # nothing in them makes TLS calls
    engine.docker(
        "import",
        "--change=ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change=ENV LANG=C.UTF-8",
        str(tarball),
        SERVICES_BASE,
    )
    files = {"nginx": (NGINX_DOCKERFILE, "nginx-light"), "redis": (REDIS_DOCKERFILE, "redis-server")}
    for name, tag in missing.items():
        dockerfile, package = files[name]
        context = workdir / f"{name}-image"
        context.mkdir(parents=True, exist_ok=True)
        (context / "Dockerfile").write_text(dockerfile.format(base=SERVICES_BASE))
        engine.docker("build", "--force-rm", "-q", "-t", tag, str(context))
        how.append(f"{tag} stood in for by Debian's {package} {debian_version(engine, tag, package)}")
    return how
