# The seqpredict server: CPU-only torch, the package installed (not editable) into one venv,
# and that venv is all the runtime stage takes from the build stage.
#
#   docker build -t seqpredict .
#   docker run --rm --stop-timeout 45 -p 127.0.0.1:50051:50051 -p 127.0.0.1:9095:9095 \
#       -v seqpredict-data:/data seqpredict
#
# tests/test_deploy.py replays this file without Docker: the build stage's COPY lines and
# protos/generate.py into a wheel, and the runtime stage's ENV, ENTRYPOINT and HEALTHCHECK
# against a real server. Keep the ENV values literal (no ARG) so that stays possible.

# Both stages on the same base, so the venv's interpreter path and ABI match.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/seqpredict
ENV PATH=/opt/seqpredict/bin:$PATH
# The CPU index and nothing else: PyPI's Linux torch is the CUDA build (several GB).
# pyproject.toml's torch==2.13.0 is then already satisfied by 2.13.0+cpu. Its own layer,
# so a code change does not download torch again.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# Only to generate the protobuf code below; removed before the venv is copied. Installed
# into the same venv so pip picks a protobuf runtime that accepts the generated code.
RUN pip install "grpcio-tools>=1.66,<2"
WORKDIR /src
# Only what the package is built from; README.md is the package's readme.
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY server/ server/
COPY client/ client/
COPY models/seqpredict/ models/seqpredict/
# The generated code is never copied from a developer's tree (.dockerignore drops it): made here.
RUN python protos/generate.py \
    && pip install . \
    && pip uninstall --yes grpcio-tools \
    && python -c "import seqpredict.v1.seqpredict_pb2_grpc, seqpredict.server.cli, seqpredict.client.cli" \
    && test -f /opt/seqpredict/lib/python3.11/site-packages/seqpredict/models/shipped/shakespeare-lstm.pt

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="seqpredict" \
      org.opencontainers.image.description="gRPC server for stateful LSTM sequence models, with Prometheus metrics"
# A fixed uid, so a bind-mounted /data can be chowned to it: `chown 10001 ./data`.
RUN groupadd --system --gid 10001 seqpredict \
    && useradd --system --uid 10001 --gid seqpredict --create-home --home-dir /home/seqpredict \
       --shell /usr/sbin/nologin seqpredict \
    && mkdir /data \
    && chown seqpredict:seqpredict /data
COPY --from=build /opt/seqpredict /opt/seqpredict
# The load generator for compose's `loadgen` service (python bench/loadgen.py from /app):
# loadgen.py imports its sibling latency.py and, otherwise, only the installed package.
WORKDIR /app
COPY bench/loadgen.py bench/latency.py bench/
# SEQPREDICT_CHECKPOINT names the shipped checkpoint (package data) explicitly; point it at
# a file under /data to serve another. The snapshot keeps sessions across restarts.
ENV PATH=/opt/seqpredict/bin:$PATH \
    PYTHONUNBUFFERED=1 \
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
