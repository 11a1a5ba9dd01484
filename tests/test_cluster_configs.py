"""The cluster configs in cluster/: they parse, and they say what a sweep on several nodes
needs (GPU workers, one shared volume at the same path everywhere, the project installed,
MLflow on the head, `monoscale submit` as the job). Fast: no Ray, no Kubernetes."""

from __future__ import annotations

import copy
import json
import os
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
SHARED = "/mnt/monoscale"


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d]
    by_name = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    assert len(by_name) == len(docs), "two manifests share a kind and name"
    return by_name


def _ray_schema() -> dict[str, Any]:
    path = Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json"
    return json.loads(path.read_text())


def test_launcher_config_is_valid_for_ray_up(launcher: dict[str, Any]) -> None:
    """The schema `ray up` validates against accepts it, and rejects a misspelt key, so
    the check has teeth."""
    schema = _ray_schema()
    jsonschema.validate(launcher, schema)
    broken = copy.deepcopy(launcher)
    broken["setup_comands"] = broken.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_launcher_has_a_head_and_gpu_workers(launcher: dict[str, Any]) -> None:
    types = launcher["available_node_types"]
    head = launcher["head_node_type"]
    assert head in types
    workers = {name: t for name, t in types.items() if name != head}
    assert workers, "no worker node type"
    gpu_workers = [t for t in workers.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_workers, "no worker node type advertises a GPU"
    assert all(t["max_workers"] >= t["min_workers"] >= 0 for t in workers.values())
    assert types[head]["resources"].get("GPU", 0) == 0  # the head runs no trials


def test_launcher_installs_the_project_and_mounts_shared_storage(
        launcher: dict[str, Any]) -> None:
    mounts = launcher["file_mounts"]
    assert mounts.get("~/monoscale") == ".", "the checkout is not copied to the nodes"
    setup = "\n".join(launcher["setup_commands"])
    assert "pip install" in setup and "-e ~/monoscale" in setup
    assert "ray[default" in setup, "`ray job submit` needs ray[default] on the head"
    assert "mount -t nfs4" in setup and SHARED in setup
    assert f"ln -sfn {SHARED}/caches ~/monoscale/caches" in setup
    # setup_commands run on every node, so every node mounts the same path.
    assert not any(SHARED in c and "mount" in c for c in launcher["head_setup_commands"])


def test_launcher_starts_mlflow_on_the_head_with_one_worker(launcher: dict[str, Any]) -> None:
    server = [c for c in launcher["head_start_ray_commands"] if "mlflow server" in c]
    assert len(server) == 1
    args = shlex.split(server[0].split("&")[0])
    assert args[args.index("--port") + 1] == "5000"
    assert args[args.index("--workers") + 1] == "1"
    assert args[args.index("--backend-store-uri") + 1].startswith("sqlite:////")
    assert args[args.index("--artifacts-destination") + 1].startswith(SHARED)
    assert not any("mlflow server" in c for c in launcher["worker_start_ray_commands"])
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


def test_kuberay_has_the_expected_objects(manifests: dict[str, dict[str, Any]]) -> None:
    assert set(manifests) == {
        "PersistentVolumeClaim/monoscale-shared", "PersistentVolumeClaim/mlflow-db",
        "Deployment/mlflow", "Service/mlflow", "RayCluster/monoscale",
        "RayJob/monoscale-demo"}
    assert manifests["PersistentVolumeClaim/monoscale-shared"]["spec"]["accessModes"] == [
        "ReadWriteMany"]
    service = manifests["Service/mlflow"]["spec"]
    assert service["type"] == "ClusterIP" and service["ports"][0]["port"] == 5000
    assert service["selector"] == manifests["Deployment/mlflow"]["spec"]["template"][
        "metadata"]["labels"]


def _pod_specs(manifests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    cluster = manifests["RayCluster/monoscale"]["spec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"],
            "mlflow": manifests["Deployment/mlflow"]["spec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[f"worker/{group['groupName']}"] = group["template"]["spec"]
    return pods


def test_kuberay_head_and_gpu_worker_group(manifests: dict[str, dict[str, Any]]) -> None:
    cluster = manifests["RayCluster/monoscale"]["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
                      "nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups, "no worker group asks for a GPU"
    assert all(g["maxReplicas"] >= g["minReplicas"] >= 0 for g in gpu_groups)


def test_kuberay_shared_volume_is_at_the_same_path_in_every_pod(
        manifests: dict[str, dict[str, Any]]) -> None:
    for name, pod in _pod_specs(manifests).items():
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}
        shared = [n for n, claim in claims.items() if claim == "monoscale-shared"]
        assert len(shared) == 1, f"{name}: the shared claim is not mounted"
        for container in pod["containers"]:
            paths = [m["mountPath"] for m in container["volumeMounts"]
                     if m["name"] == shared[0]]
            assert paths == [SHARED], f"{name}/{container['name']}: {paths}"


def test_kuberay_ray_pods_share_one_auth_token(manifests: dict[str, dict[str, Any]]) -> None:
    job_pod = manifests["RayJob/monoscale-demo"]["spec"]["submitterPodTemplate"]["spec"]
    pods = {k: v for k, v in _pod_specs(manifests).items() if k != "mlflow"}
    for name, pod in [*pods.items(), ("submitter", job_pod)]:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "monoscale-ray-token", "key": "auth_token"}, name


def test_kuberay_job_submits_the_demo_to_the_cluster(
        manifests: dict[str, dict[str, Any]]) -> None:
    job = manifests["RayJob/monoscale-demo"]["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": "monoscale"}
    command = job["entrypoint"].split("&&")[-1]
    args = shlex.split(command)
    assert args[:3] == ["monoscale", "submit", "sweeps/demo.yaml"]
    assert args[args.index("--address") + 1] == "auto"
    assert args[args.index("--tracking-uri") + 1] == "http://mlflow:5000"
    assert args[args.index("--storage") + 1].startswith(SHARED)
    server = manifests["Deployment/mlflow"]["spec"]["template"]["spec"]["containers"][0]
    hosts = next(a for a in server["command"] if a.startswith("--allowed-hosts="))
    assert "mlflow:*" in hosts.split("=", 1)[1].split(","), "MLflow would 403 `mlflow:5000`"
    assert "--workers=1" in server["command"]
