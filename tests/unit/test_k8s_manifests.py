"""The KubeRay deployment (k8s/), checked without a cluster.

Each overlay is rendered with kustomize (`kubectl kustomize`); then:
- every RayService, and the RayCluster spec embedded in it, validates against the KubeRay
  CRD's openAPIV3Schema (the copies in k8s/crds/), closed to unknown fields as
  `kubectl apply` (strict field validation) would be;
- every core object, and every Ray pod template, validates with kubernetes-validate
  (strict);
- the Serve config is a Tide ClusterConfig behind `orchestrator.serve_app:app_builder`,
  and the manifests agree with it: Serve's environment and ports, pools pinned to worker
  groups by Ray custom resources, the model on every Ray pod, the metrics port the
  PodMonitor scrapes;
- privileges: non-root everywhere but the GPU workers, which hold CAP_SYS_ADMIN only;
- the Grafana ConfigMaps hold exactly what dashboards/ has.

No Ray is started and nothing is deployed.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.cli import build_parser
from orchestrator.config import ClusterConfig
from orchestrator.serve_ingress_env import ray_serve_env

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
NAMESPACE = "tide"
KUBERNETES_VERSION = "1.30"
APP_BUILDER = "orchestrator.serve_app:app_builder"
GPU = "nvidia.com/gpu"


# ---- rendering and validation helpers ----

def _kustomize() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    command = _kustomize()
    if command is None:
        pytest.skip("no kustomize: install kubectl (or kustomize) to render k8s/overlays")
    result = subprocess.run([*command, str(K8S / "overlays" / overlay)], check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _closed(schema):
    """The schema with every object that lists its properties closed to others, which is
    what the API server's strict field validation does with unknown fields."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    crd = yaml.load((K8S / "crds" / f"ray.io_{kind.lower()}s.yaml").read_text(),
                    Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return jsonschema.Draft7Validator(_closed(served["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"the {kind} CRD serves no version {version}")


def crd_errors(obj: dict) -> list[str]:
    group, version = obj["apiVersion"].split("/")
    assert group == "ray.io", obj["apiVersion"]
    errors = _crd_validator(obj["kind"], version).iter_errors(obj)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def is_core(obj: dict) -> bool:
    """Objects of Kubernetes' own API groups (kubernetes-validate has their schemas)."""
    group = obj["apiVersion"].rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def ray_clusters(docs) -> list[tuple[dict, dict]]:
    """(owner object, RayCluster spec) for every RayCluster and every RayService."""
    found = []
    for doc in docs:
        if doc["kind"] == "RayService":
            found.append((doc, doc["spec"]["rayClusterConfig"]))
        elif doc["kind"] == "RayCluster":
            found.append((doc, doc["spec"]))
    return found


def groups(cluster: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) for the head ('head') and every worker group."""
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container comes first


def all_pod_specs(docs) -> list[tuple[str, dict]]:
    specs = [(f"{doc['metadata']['name']}/{name}", group["template"]["spec"])
             for doc, cluster in ray_clusters(docs) for name, group in groups(cluster)]
    specs += [(doc["metadata"]["name"], doc["spec"]["template"]["spec"])
              for doc in docs if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    return specs


def serve_config(service: dict) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def cluster_config(service: dict) -> ClusterConfig:
    (application,) = serve_config(service)["applications"]
    return ClusterConfig.model_validate(application["args"]["config"])


def ray_start_resources(group: dict) -> dict[str, float]:
    """rayStartParams `resources`, written as KubeRay documents it: '"{\\"name\\": 1}"'."""
    raw = group.get("rayStartParams", {}).get("resources")
    if raw is None:
        return {}
    text = raw.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    return json.loads(text)


def ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}


def services(overlay: str) -> list[dict]:
    return [doc for doc in render(overlay) if doc["kind"] == "RayService"]


# ---- the manifests ----

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_tide_and_its_monitoring_into_one_namespace(overlay):
    docs = render(overlay)
    kinds = sorted(doc["kind"] for doc in docs)
    expected = ["ConfigMap"] * 3 + ["Deployment", "Namespace", "PodMonitor", "RayService", "Service"]
    if overlay == "gpu":
        expected.append("PersistentVolumeClaim")
    assert kinds == sorted(expected)
    assert [doc["metadata"]["name"] for doc in docs if doc["kind"] == "Namespace"] == [NAMESPACE]
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {NAMESPACE}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_object_validates_against_the_kuberay_crds(overlay):
    clusters = ray_clusters(render(overlay))
    assert clusters
    for owner, spec in clusters:
        assert crd_errors(owner) == [], owner["metadata"]["name"]
        # The RayCluster a RayService creates must be valid on its own as well.
        embedded = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "embedded"}, "spec": spec}
        assert crd_errors(embedded) == [], owner["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_core_object_and_ray_pod_template_validates_with_kubernetes_validate(overlay):
    docs = render(overlay)
    core = [doc for doc in docs if is_core(doc)]
    assert {doc["kind"] for doc in docs if not is_core(doc)} == {"RayService", "PodMonitor"}
    for doc in core:
        assert core_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
    for owner, cluster in ray_clusters(docs):
        for name, group in groups(cluster):
            template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                        "template": group["template"]}
            assert core_errors(template) == [], f"{owner['metadata']['name']}/{name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_is_a_tide_cluster_config_behind_the_app_builder(overlay):
    for service in services(overlay):
        config = serve_config(service)
        (application,) = config["applications"]
        assert application["import_path"] == APP_BUILDER
        module_name, attribute = APP_BUILDER.split(":")
        spec = importlib.util.find_spec(module_name)
        assert spec is not None and spec.origin is not None
        functions = {node.name for node in ast.parse(Path(spec.origin).read_text()).body
                     if isinstance(node, ast.FunctionDef)}
        assert attribute in functions
        cluster = cluster_config(service)
        assert application["name"] == cluster.name
        assert application["route_prefix"] == cluster.serve.route_prefix
        # Serve's own front door: its proxy on serve.port, or (direct ingress) on proxy_port.
        proxy_port = cluster.serve.proxy_port if cluster.serve.direct_ingress else cluster.serve.port
        assert config["http_options"] == {"host": "0.0.0.0", "port": proxy_port}
        assert cluster.serve.host == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_container_carries_the_serve_environment_and_ports_of_the_config(overlay):
    for service in services(overlay):
        cluster = cluster_config(service)
        expected_env = ray_serve_env(cluster.serve)
        for name, group in groups(service["spec"]["rayClusterConfig"]):
            container = ray_container(group)
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert {k: v for k, v in env.items() if k.startswith("RAY_SERVE_")} == expected_env, name
            assert ports(container)["serve"] == cluster.serve.port, name
            assert ports(container)["metrics"] == int(group["rayStartParams"]["metrics-export-port"]), name
        head = ray_container(service["spec"]["rayClusterConfig"]["headGroupSpec"])
        # KubeRay builds the head Service from these; workers join through gcs-server.
        assert {"gcs-server": 6379, "dashboard": 8265, "client": 10001}.items() <= ports(head).items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pool_is_pinned_to_one_worker_group_that_can_hold_it(overlay):
    for service in services(overlay):
        config = cluster_config(service)
        spec = service["spec"]["rayClusterConfig"]
        autoscaled = spec.get("enableInTreeAutoscaling", False)
        workers = spec["workerGroupSpecs"]
        assert ray_start_resources(spec["headGroupSpec"]) == {}
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for pool in config.pools:
            assert pool.resources, f"pool {pool.name} is not pinned to a worker group"
            hosts = [g for g in workers if set(pool.resources) <= set(ray_start_resources(g))]
            assert [g["groupName"] for g in hosts] == [pool.name]
            (group,) = hosts
            per_pod = min(int(ray_start_resources(group)[k] // v) for k, v in pool.resources.items())
            assert per_pod >= 1
            assert pool.num_cpus <= float(group["rayStartParams"]["num-cpus"])
            pods = group["maxReplicas"] if autoscaled else group["replicas"]
            assert pool.num_replicas <= per_pod * pods, pool.name
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_model_is_where_the_config_says_on_every_ray_pod(overlay):
    docs = render(overlay)
    claims = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"}
    for service in services(overlay):
        model = Path(cluster_config(service).engine.model)
        for name, group in groups(service["spec"]["rayClusterConfig"]):
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            (mount,) = [m for m in ray_container(group)["volumeMounts"] if model.is_relative_to(m["mountPath"])]
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
                continue
            # No volume to read it from: an init container builds it with `tide model build`.
            assert "emptyDir" in volume, name
            builders = [c for c in pod.get("initContainers", [])
                        if any(m["name"] == mount["name"] for m in c.get("volumeMounts", []))]
            assert len(builders) == 1, name
            (builder,) = builders
            assert builder["command"] == ["tide"]
            args = build_parser().parse_args(builder["args"])
            assert (args.command, args.model_command, Path(args.out)) == ("model", "build", model), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_podmonitor_scrapes_every_ray_pod_and_nothing_else(overlay):
    docs = render(overlay)
    (monitor,) = [doc for doc in docs if doc["kind"] == "PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ray_pods = [(name, group) for _, cluster in ray_clusters(docs) for name, group in groups(cluster)]
    for name, group in ray_pods:
        # KubeRay adds `ray.io/is-ray-node: "yes"` to every Ray pod; the rest must be ours.
        labels = {**group["template"]["metadata"]["labels"], "ray.io/is-ray-node": "yes"}
        assert selector.items() <= labels.items(), name
        assert endpoint["port"] in ports(ray_container(group)), name
    for doc in docs:
        if doc["kind"] == "Deployment":
            assert not selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resource_requests_and_limits(overlay):
    docs = render(overlay)
    for name, pod in all_pod_specs(docs):
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}/{container['name']} {kind}"
            assert resources["requests"].get(GPU) == resources["limits"].get(GPU), f"{name}/{container['name']}"
    for _, cluster in ray_clusters(docs):
        if cluster.get("enableInTreeAutoscaling"):
            assert {"requests", "limits"} <= set(cluster["autoscalerOptions"]["resources"])


def _runs_as_root(pod: dict, container: dict) -> bool:
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    return context.get("runAsUser", 0) == 0 or not context.get("runAsNonRoot", False)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gpu_worker_containers_are_root_and_they_hold_sys_admin_alone(overlay):
    docs = render(overlay)
    privileged = []
    for name, pod in all_pod_specs(docs):
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert not context.get("privileged", False), where
            if GPU in container["resources"]["limits"]:
                privileged.append(where)
                assert context["capabilities"]["add"] == ["SYS_ADMIN"], where
                # Kubernetes refuses allowPrivilegeEscalation: false beside SYS_ADMIN.
                assert context["allowPrivilegeEscalation"] is True, where
                assert _runs_as_root(pod, container), where
            else:
                assert "add" not in context["capabilities"], where
                assert context["allowPrivilegeEscalation"] is False, where
                assert not _runs_as_root(pod, container), where
    for _, cluster in ray_clusters(docs):
        if cluster.get("enableInTreeAutoscaling"):
            context = cluster["autoscalerOptions"]["securityContext"]
            assert context["runAsNonRoot"] and context["capabilities"]["drop"] == ["ALL"]
    (namespace,) = [doc for doc in docs if doc["kind"] == "Namespace"]
    level = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    if overlay == "cpu":
        assert privileged == [] and level == "restricted"
    else:
        assert [p.rsplit("/", 2)[1] for p in privileged] == ["prefill", "decode"] and level == "privileged"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_probes_leave_worker_readiness_to_kuberay(overlay):
    for service in services(overlay):
        for name, group in groups(service["spec"]["rayClusterConfig"]):
            container = ray_container(group)
            assert container["livenessProbe"]["httpGet"]["port"] == int(
                group["rayStartParams"]["dashboard-agent-listen-port"]), name
            # KubeRay's own readiness probe on RayService workers also checks Serve's
            # proxy: a worker without one must not join tide-serve-svc.
            assert ("readinessProbe" in container) == (name == "head"), name


def test_gpu_worker_groups_ask_for_gpus_on_gpu_nodes_and_nixl_finds_them():
    for service in services("gpu"):
        config = cluster_config(service)
        spec = service["spec"]["rayClusterConfig"]
        assert GPU not in ray_container(spec["headGroupSpec"])["resources"]["limits"]
        for group in spec["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            container = ray_container(group)
            assert int(container["resources"]["limits"][GPU]) == int(group["rayStartParams"]["num-gpus"]) >= 1
            assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
            assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in pod["tolerations"])
            if config.kv.medium.value == "nixl":
                env = {e["name"]: e for e in container["env"]}
                assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


# ---- Grafana ----

def _render_script():
    spec = importlib.util.spec_from_file_location("render_grafana_configmaps", K8S / "render_grafana_configmaps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_grafana_configmaps_are_up_to_date():
    script = _render_script()
    assert script.OUTPUT.read_text() == script.render(), "run `python k8s/render_grafana_configmaps.py`"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_gets_the_datasource_provider_and_every_dashboard(overlay):
    docs = render(overlay)
    maps = {doc["metadata"]["name"]: doc["data"] for doc in docs if doc["kind"] == "ConfigMap"}
    generated = {p.name: p.read_text() for p in (ROOT / "dashboards" / "generated").glob("*.json")}
    assert generated and maps["tide-grafana-dashboards"] == generated
    provisioning = ROOT / "dashboards" / "provisioning"
    assert maps["tide-grafana-datasources"] == {p.name: p.read_text() for p in (provisioning / "datasources").glob("*")}
    providers = {p.name: p.read_text() for p in (provisioning / "dashboards").glob("*")}
    assert maps["tide-grafana-dashboard-provider"] == providers
    (grafana,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    pod = grafana["spec"]["template"]["spec"]
    mounted = {v["configMap"]["name"]: v["name"] for v in pod["volumes"] if "configMap" in v}
    assert set(mounted) == set(maps)
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    paths = {p["options"]["path"] for text in providers.values() for p in yaml.safe_load(text)["providers"]}
    assert paths == {mounts[mounted["tide-grafana-dashboards"]]}
    assert mounts[mounted["tide-grafana-datasources"]] == "/etc/grafana/provisioning/datasources"
    assert mounts[mounted["tide-grafana-dashboard-provider"]] == "/etc/grafana/provisioning/dashboards"


# ---- the checks above can fail ----

def _broken(obj: dict, path: tuple, value=None, delete: bool = False) -> dict:
    broken = copy.deepcopy(obj)
    node = broken
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return broken


def test_crd_validation_rejects_a_broken_rayservice():
    (service,) = services("cpu")
    worker = ("spec", "rayClusterConfig", "workerGroupSpecs", 0)
    assert crd_errors(service) == []
    assert crd_errors(_broken(service, (*worker, "replicas"), "two"))                   # wrong type
    assert crd_errors(_broken(service, (*worker, "groupName"), delete=True))             # required
    assert crd_errors(_broken(service, (*worker, "replica"), 2))                         # unknown field
    assert crd_errors(_broken(service, (*worker, "template", "spec", "containers", 0, "ports", 0, "containerPort"),
                              "serve"))                                                    # deep in the pod spec


def test_kubernetes_validate_rejects_a_broken_deployment():
    (grafana,) = [doc for doc in render("cpu") if doc["kind"] == "Deployment"]
    container = ("spec", "template", "spec", "containers", 0)
    assert core_errors(grafana) == []
    assert core_errors(_broken(grafana, ("spec", "replicas"), "one"))
    assert core_errors(_broken(grafana, (*container, "ports", 0, "containerPort"), "http"))
    assert core_errors(_broken(grafana, (*container, "volumeMount"), []))


def test_the_serve_config_check_rejects_what_tide_would_reject():
    (service,) = services("cpu")
    assert cluster_config(service).pools
    config = serve_config(service)
    config["applications"][0]["args"]["config"]["pools"][0]["gpus"] = 1
    broken = _broken(service, ("spec", "serveConfigV2"), yaml.safe_dump(config))
    with pytest.raises(ValueError, match="gpus"):
        cluster_config(broken)
