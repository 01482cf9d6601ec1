"""The Kubernetes example (deploy/kubernetes/) agrees with the compose `cluster` profile and the server.

No cluster here: what needs one (kubectl apply, the kubelet's probes, kube-proxy refusing a
replica's Service while its pod is down) is left to deploy/kubernetes/README.md. What can be
checked without one is checked against the real parts: the manifests as YAML, nginx's ConfigMap
against the reference file and against nginx itself, the replicas' image and settings against
docker-compose.yml, and the probes against a real server started with the pod's settings.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cluster.nginx_conf import NGINX_CONF, nginx_binary, render_nginx_conf, with_upstreams
from tests.cluster.replicas import RedisServer
from tests.deployfiles import (
    ROOT,
    compose_config,
    dockerfile_stages,
    duration_s,
    load_yaml,
    require_tool,
)
from tests.serverproc import ServerProcess

K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"


# -- reading the manifests ----------------------------------------------------------------------
def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of a file, parsed by the PyYAML docker-compose runs on (as load_yaml)."""
    compose = Path(require_tool("docker-compose", "docker-compose"))
    interpreter = shlex.split(compose.read_bytes()[:200].split(b"\n", 1)[0][2:].decode())
    code = "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout, default=str)"
    done = subprocess.run([*interpreter, "-c", code], input=path.read_text(), capture_output=True, text=True)
    assert done.returncode == 0, f"{path.name} did not parse:\n{done.stderr}"
    documents = json.loads(done.stdout)
    assert documents and all(isinstance(d, dict) for d in documents), f"{path.name}: an empty or non-mapping document"
    return documents


def all_objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_documents(path)]


def object_key(o: dict[str, Any]) -> tuple[str, str]:
    return o["kind"], o["metadata"]["name"]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, str]:
    assert all("value" in e for e in c["env"]), "every setting is a literal value here (Secrets are a comment)"
    return {e["name"]: e["value"] for e in c["env"]}


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return found


def replicas_statefulset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "StatefulSet", "seqpredict")


def per_replica_services(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "Service" and POD_NAME_LABEL in o["spec"].get("selector", {})]


def compose_replica() -> tuple[dict[str, Any], dict[str, Any]]:
    services = compose_config()["services"]
    return services["replica-1"], services


# -- the files --------------------------------------------------------------------------------
def test_every_manifest_parses_and_kustomization_lists_every_file() -> None:
    kustomization = load_yaml((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    assert {p.name for p in MANIFESTS} >= {"seqpredict.yaml", "nginx.yaml", "redis.yaml"}
    objects = all_objects()
    for o in objects:
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o
        assert "namespace" not in o["metadata"], "the namespace is the user's choice (kubectl -n, kustomize)"
    keys = [object_key(o) for o in objects]
    assert len(keys) == len(set(keys)), "two objects of one kind and name"


def test_kubectl_kustomize_renders_exactly_the_files_objects(tmp_path: Path) -> None:
    """`kubectl apply -k` applies what `kubectl kustomize` renders: every object, nothing else."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("skipped, because kubectl is not installed (the kustomization is checked by the test above)")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(done.stdout)
    assert sorted(load_documents(rendered), key=object_key) == sorted(all_objects(), key=object_key)


# -- replicas ---------------------------------------------------------------------------------
def test_one_service_per_replica_selecting_only_that_pod() -> None:
    objects = all_objects()
    sts = replicas_statefulset(objects)
    server = container(sts, "seqpredict")
    grpc_port = int(env_of(server)["SEQPREDICT_PORT"])
    services = per_replica_services(objects)
    names = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    assert [s["metadata"]["name"] for s in services] == names
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for service, pod in zip(services, names, strict=True):
        selector = service["spec"]["selector"]
        assert selector[POD_NAME_LABEL] == pod
        assert {k: v for k, v in selector.items() if k != POD_NAME_LABEL}.items() <= pod_labels.items()
        assert service["spec"].get("clusterIP") != "None", "a stable virtual IP, not the pod's own address"
        (port,) = service["spec"]["ports"]
        assert port["port"] == grpc_port and port_number(server, port["targetPort"]) == grpc_port
    governing = one(objects, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_replicas_are_the_compose_cluster_image_with_its_settings() -> None:
    objects = all_objects()
    replica, services = compose_replica()
    server = container(replicas_statefulset(objects), "seqpredict")
    assert server["image"] == replica["image"]
    env, compose_env = env_of(server), dict(replica["environment"])
    store = urlsplit(env.pop("SEQPREDICT_STATE_STORE"))
    compose_store = urlsplit(compose_env.pop("SEQPREDICT_STATE_STORE"))
    # Compose runs three replicas on one host, one frontend each; a pod has up to two cores of its own
    # and keeps the default (two).
    assert compose_env.pop("SEQPREDICT_FRONTENDS") == "1" and "SEQPREDICT_FRONTENDS" not in env
    assert env == compose_env  # durability sync, no snapshot, the drain, the ports
    assert env["SEQPREDICT_DURABILITY"] == "sync" and env["SEQPREDICT_SNAPSHOT_PATH"] == ""
    # The same Redis URL but for the host, which is the Redis Service here.
    assert (store.scheme, store.port, store.path) == (compose_store.scheme, compose_store.port, compose_store.path)
    redis_service = one(objects, "Service", store.hostname)
    redis = one(objects, "StatefulSet", "seqpredict-redis")
    redis_container = container(redis, "redis")
    (redis_port,) = redis_service["spec"]["ports"]
    assert redis_port["port"] == store.port and port_number(redis_container, redis_port["targetPort"]) == store.port
    assert redis_service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    # Redis as in compose: the same image and flags (appendonly), its /data on a claim of its own.
    assert redis_container["image"] == services["redis"]["image"]
    assert redis_container["args"] == services["redis"]["command"]
    args = redis_container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in redis_container["volumeMounts"]}
    assert mounts[args[args.index("--dir") + 1]] == claim["metadata"]["name"]
    assert redis["spec"]["replicas"] == 1
    assert container(one(objects, "Deployment", "seqpredict-nginx"), "nginx")["image"] == services["nginx"]["image"]


def test_kubernetes_waits_for_the_drain_longer_than_it_lasts() -> None:
    objects = all_objects()
    replica, _ = compose_replica()
    sts = replicas_statefulset(objects)
    grace_s = float(env_of(container(sts, "seqpredict"))["SEQPREDICT_GRACE_S"])
    termination = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # Open calls get grace_s, then every session is committed to Redis: never SIGKILLed meanwhile.
    assert termination > grace_s + 5
    assert termination >= duration_s(replica["stop_grace_period"])


def test_probes_ask_the_ports_and_paths_the_server_serves() -> None:
    objects = all_objects()
    sts = replicas_statefulset(objects)
    server = container(sts, "seqpredict")
    env = env_of(server)
    grpc_port, metrics_port = int(env["SEQPREDICT_PORT"]), int(env["SEQPREDICT_METRICS_PORT"])
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"grpc": grpc_port, "metrics": metrics_port}
    assert port_number(server, server["startupProbe"]["grpc"]["port"]) == grpc_port
    assert server["startupProbe"]["grpc"].get("service", "") == ""  # the server's overall health
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = server[probe]["httpGet"]
        assert (port_number(server, get["port"]), get["path"]) == (metrics_port, path)
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"]) == (metrics_port, "/metrics")


def test_pods_run_unprivileged_on_a_read_only_root_with_limits() -> None:
    objects = all_objects()
    runtime = dockerfile_stages()[-1]
    user = runtime.one("USER")
    uid = re.search(rf"useradd --uid (\d+) .*{user}", " ".join(runtime.all("RUN")))
    assert uid, "the image's user and uid"
    sts = replicas_statefulset(objects)
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    server = container(sts, "seqpredict")
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    # The image's volume stays writable; the temporary folder too: the server's processes talk
    # over a socket made there (tempfile), and the image leaves /tmp closed to its user.
    assert set(runtime.one("VOLUME").split()) <= set(mounts)
    assert "/tmp" in mounts
    assert not any(m.get("readOnly") for m in mounts.values())
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[m["name"]] for m in mounts.values()), "nothing of a session lives on the pod"
    for workload in [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]:
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_the_pods_settings_start_a_server_that_answers_its_probes(tmp_path: Path, redis_server: RedisServer) -> None:
    """The replica's environment, with only addresses moved to loopback, and each probe asked as the kubelet does."""
    sts = replicas_statefulset(all_objects())
    server_spec = container(sts, "seqpredict")
    env = env_of(server_spec) | {
        "SEQPREDICT_HOST": "127.0.0.1",
        "SEQPREDICT_METRICS_HOST": "127.0.0.1",
        "SEQPREDICT_STATE_STORE": redis_server.url,
    }
    # Ports are free ones (flags win over the environment); the probes' ports are the same settings.
    server = ServerProcess(tmp_path / "replica.log", env=env, wait=False)
    try:
        server.wait_serving()  # what the startup probe asks: grpc.health.v1 Check, service ""
        with grpc.insecure_channel(server.address) as channel:
            service = server_spec["startupProbe"]["grpc"].get("service", "")
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for probe in ("readinessProbe", "livenessProbe"):
            path = server_spec[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}{path}", timeout=5) as answer:
                assert answer.status == 200, (probe, path)
        # The kubelet's SIGTERM: the drain ends, exit 0, within terminationGracePeriodSeconds.
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]) == 0
    finally:
        if server.proc.poll() is None:
            server.kill()


# -- nginx ------------------------------------------------------------------------------------
def nginx_objects() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    objects = all_objects()
    return (
        one(objects, "ConfigMap", "seqpredict-nginx"),
        one(objects, "Deployment", "seqpredict-nginx"),
        one(objects, "Service", "seqpredict"),
    )


def test_nginx_conf_is_the_reference_file_with_one_server_per_replica_service() -> None:
    objects = all_objects()
    config_map, _, _ = nginx_objects()
    addresses = [f"{s['metadata']['name']}:{s['spec']['ports'][0]['port']}" for s in per_replica_services(objects)]
    assert len(addresses) == replicas_statefulset(objects)["spec"]["replicas"]
    assert config_map["data"]["nginx.conf"] == with_upstreams(NGINX_CONF.read_text(), addresses)


def test_nginx_pods_read_that_conf_and_clients_reach_its_listen_port() -> None:
    config_map, deployment, service = nginx_objects()
    nginx = container(deployment, "nginx")
    assert deployment["spec"]["replicas"] == 2
    args = nginx["args"]
    conf_path = Path(args[args.index("-c") + 1])
    mounts = {m["mountPath"]: m for m in nginx["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = mounts[str(conf_path.parent)]
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert conf_path.name in config_map["data"]
    # The file keeps deployment paths out: the pid file goes where the pod can write.
    directives = args[args.index("-g") + 1]
    assert "daemon off;" in directives
    pid = re.search(r"\bpid (\S+);", directives)
    assert pid, directives
    pid_dir = str(Path(pid.group(1)).parent)
    assert pid_dir in mounts and not mounts[pid_dir].get("readOnly")
    # The graceful quit before the pod stops signals that very nginx (its file, its pid file).
    pre_stop = " ".join(nginx["lifecycle"]["preStop"]["exec"]["command"])
    assert f"-c {conf_path} " in pre_stop and f"pid {pid.group(1)};" in pre_stop and "-s quit" in pre_stop
    listen = re.search(r"^\s*listen\s+(\d+)\s+http2;", config_map["data"]["nginx.conf"], re.M)
    assert listen
    (port,) = service["spec"]["ports"]
    assert port_number(nginx, port["targetPort"]) == int(listen.group(1))
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_nginx_accepts_the_configmaps_conf(tmp_path: Path) -> None:
    """nginx -t on the ConfigMap's file, its replica Services moved to loopback (they resolve only in a cluster)."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("skipped, because nginx is not installed (Debian's nginx-light: make system-deps installs it)")
    config_map, _, _ = nginx_objects()
    conf_text = config_map["data"]["nginx.conf"]
    services = re.findall(r"^\s*server\s+(seqpredict-\d+):\d+\b", conf_text, re.M)
    assert len(services) == replicas_statefulset(all_objects())["spec"]["replicas"]
    # Back to the `server replica-N:50051` form render_nginx_conf replaces; nothing else changes.
    as_template = re.sub(r"^(\s*server\s+)seqpredict-(\d+):", r"\1replica-\2:", conf_text, flags=re.M)
    loopback = [f"127.0.0.1:{50051 + i}" for i in range(len(services))]
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(as_template, loopback, 8080, tmp_path))
    done = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
