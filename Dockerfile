# The seqpredict server: CPU-only torch, the client and server distributions installed (not
# editable) into one venv, trimmed to what serving uses; that venv is all the runtime stage takes.
#
#   docker build -t seqpredict .
#   docker run --rm --stop-timeout 45 -p 127.0.0.1:50051:50051 -p 127.0.0.1:9095:9095 \
#       -v seqpredict-data:/data seqpredict
#
# Where the wheels come from, as build arguments (the defaults need the internet):
#   TORCH_INDEX_URL  the index torch alone comes from: the PyTorch CPU index, or a mirror of it;
#                    empty: no index, torch must be in WHEELS
#   INDEX_URL        the index for everything else: PyPI, or a mirror; empty: none (air-gapped)
#   WHEELS           a folder of the build context that pip searches first (deploy/image/wheels)
# e.g. torch from a wheel folder, the rest from PyPI (what `make test-docker` does):
#   docker build --build-arg TORCH_INDEX_URL= -t seqpredict .      (torch…+cpu…whl in deploy/image/wheels)
# The build fails, never falls back, when the torch it got is not the CPU build of 2.13.0.
#
# tests/test_deploy.py replays this file without Docker (COPY lines, generate, the wheels, ENV,
# ENTRYPOINT, HEALTHCHECK); tests/docker/ builds and runs it with a real engine. Keep the
# runtime stage's ENV values literal (no ARG) so the replay stays possible.

# Both stages on the same base, so the venv's interpreter path and ABI match.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG INDEX_URL=https://pypi.org/simple
ARG WHEELS=deploy/image/wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/seqpredict
ENV PATH=/opt/seqpredict/bin:$PATH
COPY deploy/image/check_cpu_torch.py deploy/image/slim.py /build/
COPY ${WHEELS}/ /wheels/
# torch itself from its own index or the wheel folder, never from PyPI (whose Linux torch is the
# CUDA build); then its dependencies from the main index (torch==2.13.0 is satisfied by now, so
# pip adds only those); then checked. Its own layer, so a code change does not install it again.
RUN if [ -n "$TORCH_INDEX_URL" ]; then torch_from="--index-url $TORCH_INDEX_URL"; else torch_from="--no-index"; fi \
    && if [ -n "$INDEX_URL" ]; then from="--index-url $INDEX_URL"; else from="--no-index"; fi \
    && pip install --no-deps $torch_from --find-links /wheels torch==2.13.0 \
    && pip install $from --find-links /wheels torch==2.13.0 \
    && python /build/check_cpu_torch.py
# Only to generate the protobuf code below; removed again. Installed into the same venv so pip
# picks a protobuf runtime that accepts the generated code.
RUN if [ -n "$INDEX_URL" ]; then from="--index-url $INDEX_URL"; else from="--no-index"; fi \
    && pip install $from --find-links /wheels "grpcio-tools>=1.66,<2"
WORKDIR /src
# Only what the two distributions are built from; README.md is the server's readme.
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY client/ client/
COPY server/ server/
COPY models/seqpredict/ models/seqpredict/
# The generated code is never copied from a developer's tree (.dockerignore drops it): made here.
# torch==2.13.0 is already satisfied by 2.13.0+cpu; the check runs again to prove it stayed so.
# slim.py starts the server, predicts and generates, then cuts what that never imported.
RUN if [ -n "$INDEX_URL" ]; then from="--index-url $INDEX_URL"; else from="--no-index"; fi \
    && python protos/generate.py \
    && pip install $from --find-links /wheels ./client . \
    && pip uninstall --yes grpcio-tools \
    && python /build/check_cpu_torch.py \
    && test -f /opt/seqpredict/lib/python3.11/site-packages/seqpredict/models/shipped/shakespeare-lstm.pt \
    && cd / && python /build/slim.py /opt/seqpredict

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="seqpredict" \
      org.opencontainers.image.description="gRPC server for stateful LSTM sequence models, with Prometheus metrics"
# A fixed uid, so a bind-mounted /data can be chowned to it: `chown 10001 ./data`. No home
# folder, and the world-writable temporary folders closed: the server writes only to /data.
RUN groupadd --gid 10001 seqpredict \
    && useradd --uid 10001 --gid seqpredict --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin seqpredict \
    && mkdir /data \
    && chown seqpredict:seqpredict /data \
    && find / -xdev \( -type d -o -type f \) -perm -0002 -exec chmod o-w {} +
COPY --from=build /opt/seqpredict /opt/seqpredict
# The load generator for compose's `loadgen` service (python bench/loadgen.py from /app):
# loadgen.py imports its sibling latency.py and, otherwise, only the installed client.
WORKDIR /app
COPY bench/loadgen.py bench/latency.py bench/
# SEQPREDICT_CHECKPOINT names the shipped checkpoint (package data) explicitly; point it at
# a file under /data to serve another. The snapshot keeps sessions across restarts.
# TMPDIR=/data: the supervisor makes a private folder for its engine's socket (mkdtemp), and
# /tmp is closed above; without it the server cannot start ("No usable temporary directory").
ENV PATH=/opt/seqpredict/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/data \
    SEQPREDICT_HOST=0.0.0.0 \
    SEQPREDICT_METRICS_HOST=0.0.0.0 \
    SEQPREDICT_CHECKPOINT=/opt/seqpredict/lib/python3.11/site-packages/seqpredict/models/shipped/shakespeare-lstm.pt \
    SEQPREDICT_SNAPSHOT_PATH=/data/sessions.snapshot
# Snapshots, and other checkpoints to serve. Declared after the chown: a new volume starts
# owned by the server's user.
VOLUME /data
USER seqpredict
# gRPC, Prometheus metrics (/metrics).
EXPOSE 50051 9095
STOPSIGNAL SIGTERM
# The standard grpc.health.v1 service, through the client CLI (exit 0 only when SERVING;
# NOT_SERVING while starting and draining). `|| exit 1`: Docker reserves exit code 2. Admission
# lets health checks through without a bearer token; with TLS, override it with --tls-ca.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD seqpredict --target "127.0.0.1:${SEQPREDICT_PORT:-50051}" --timeout 3 health || exit 1
# Exec form: the server is PID 1 and gets SIGTERM itself (drain, snapshot, exit 0).
# Flags can follow the image name: `docker run seqpredict --max-sessions 1000`.
ENTRYPOINT ["seqpredict-server"]
CMD []
