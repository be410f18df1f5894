"""Cluster deployment files rendered from configs: ``vhindex deploy render`` (KubeRay manifests, Ray launcher YAML).

One file, ``configs/deploy/cluster.yaml`` (:class:`DeploySpec`), says where vhindex runs: the images, the
head and worker groups, the shared storage, the jobs (entry points of ``jobs/`` with the same ``configs/``
files the CLI uses) and the Serve application (``configs/serve/local.yaml``). Everything in ``infra/`` is
rendered from it, so the files cannot drift from the configs:

* ``infra/k8s/raycluster.yaml`` -- a long-running RayCluster: head, CPU workers, GPU workers (``nvidia.com/gpu``),
  autoscaling bounds, object store and ``/dev/shm`` sizes;
* ``infra/k8s/rayjob-<job>.yaml`` -- one RayJob per job (``ray job submit`` entry point, ``shutdownAfterJobFinishes``,
  ``backoffLimit``), e.g. ``train-dkph``, ``extract``, ``encode``;
* ``infra/k8s/rayservice.yaml`` -- the query service: ``serveConfigV2`` is the Serve config with the spec's
  overrides, every pod carries the throughput-optimized Serve environment (:func:`cluster.serve.serve_cluster_env`)
  and the data-plane ports, the head's readiness probe is ``/healthz``, the bearer token comes from a Secret;
* ``infra/cluster/vhindex-aws.yaml`` and ``infra/cluster/vhindex-local.yaml`` -- Ray cluster-launcher configs.

Rendering checks what it embeds: every job's config with its overrides loads (:func:`vhindex.config.load_config`)
and the Serve config with its overrides is a valid ``ServeSection``. ``tests/test_deploy.py`` validates the
files against the KubeRay CRD schemas, Ray Serve's schema and the launcher's ``ray-schema.json``, and checks
that the committed files equal a fresh rendering.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DeploySpec", "check", "load_spec", "render"]

HEADER = "# Rendered by `vhindex deploy render --config {config}` -- edit that file, not this one.\n"
#: the port of the Serve HTTP proxy / router replicas' direct ingress inside the pods
SERVE_PORT = 8000


class GroupSpec(BaseModel):
    """One Ray node group."""

    model_config = ConfigDict(extra="forbid")
    cpu: int = Field(gt=0)
    memory: str = Field(description="Kubernetes quantity, e.g. 32Gi")
    gpus: int = Field(0, ge=0)
    object_store_gb: int = Field(gt=0, description="Ray object store per node (GB)")
    replicas: int = Field(1, ge=0)
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=0)


class JobSpec(BaseModel):
    """One ``ray job submit`` entry point: ``python jobs/<job>.py --config configs/...`` plus overrides."""

    model_config = ConfigDict(extra="forbid")
    entrypoint: str
    overrides: list[str] = Field(default_factory=list)


class ServeSpec(BaseModel):
    """The query service: a Serve config of ``configs/serve/`` and overrides of its args."""

    model_config = ConfigDict(extra="forbid")
    config: str
    overrides: list[str] = Field(default_factory=list)
    auth_secret: str | None = Field(None, description="Secret with key `token`: the bearer token")


class LauncherSpec(BaseModel):
    """Ray cluster-launcher settings (``ray up``)."""

    model_config = ConfigDict(extra="forbid")
    provider: str = "aws"
    region: str = "us-east-1"
    head_instance: str = "m6i.2xlarge"
    cpu_instance: str = "m6i.4xlarge"
    gpu_instance: str = "g5.2xlarge"
    ssh_user: str = "ubuntu"
    local_head_ip: str = "10.0.0.10"
    local_worker_ips: list[str] = Field(default_factory=list)


class DeploySpec(BaseModel):
    """``configs/deploy/cluster.yaml`` (module docs)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    namespace: str = "default"
    image: str
    gpu_image: str
    ray_version: str
    storage: str
    s3_secret: str | None = None
    head: GroupSpec
    cpu_workers: GroupSpec
    gpu_workers: GroupSpec
    shm_size: str = "8Gi"
    jobs: dict[str, JobSpec] = Field(default_factory=dict)
    job_backoff_limit: int = Field(2, ge=0)
    serve: ServeSpec
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)


def load_spec(path: str | Path) -> DeploySpec:
    """Read and check a deployment spec."""
    from vhindex.config import ConfigError

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    try:
        return DeploySpec.model_validate(data)
    except Exception as err:  # pydantic ValidationError -> one clear message naming the file
        raise ConfigError(str(path), [("deploy spec", str(err))]) from None


class _Dumper(yaml.SafeDumper):
    """Readable YAML: no anchors / aliases, multi-line strings (the embedded Serve config) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


# ------------------------------------------------------------------------------------------ pieces


def _env(spec: DeploySpec, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
                                 {"name": "VHINDEX_STORAGE", "value": spec.storage}]
    if spec.s3_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": spec.s3_secret, "key": key}}})
        env.append({"name": "AWS_ENDPOINT_URL", "valueFrom": {"secretKeyRef": {"name": spec.s3_secret,
                                                                               "key": "AWS_ENDPOINT_URL",
                                                                               "optional": True}}})
    for k, v in sorted((extra or {}).items()):
        env.append({"name": k, "value": str(v)})
    return env


def _pod(spec: DeploySpec, group: GroupSpec, image: str, env: list[dict[str, Any]],
         ports: list[dict[str, Any]] | None = None, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(group.cpu), "memory": group.memory}
    if group.gpus:
        limits["nvidia.com/gpu"] = str(group.gpus)
    container: dict[str, Any] = {
        "name": "ray", "image": image, "imagePullPolicy": "IfNotPresent", "env": copy.deepcopy(env),
        "resources": {"limits": limits, "requests": dict(limits)},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    if ports:
        container["ports"] = ports
    if probe:
        container["readinessProbe"] = probe
    pod: dict[str, Any] = {"containers": [container],
                           "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}]}
    if group.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": pod}


def _start_params(group: GroupSpec, *, head: bool) -> dict[str, str]:
    params = {"object-store-memory": str(group.object_store_gb * 10**9), "num-cpus": str(group.cpu)}
    if group.gpus:
        params["num-gpus"] = str(group.gpus)
    if head:
        params.update({"dashboard-host": "0.0.0.0", "num-cpus": "0"})  # the head schedules no work of its own
    return params


def _cluster_spec(spec: DeploySpec, env_extra: dict[str, str] | None = None, serve_ports: bool = False,
                  probe: dict[str, Any] | None = None) -> dict[str, Any]:
    env = _env(spec, env_extra)
    ports = [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
             {"name": "client", "containerPort": 10001}]
    if serve_ports:
        ports.append({"name": "serve", "containerPort": SERVE_PORT})
    workers = []
    for name, group, image in (("cpu", spec.cpu_workers, spec.image), ("gpu", spec.gpu_workers, spec.gpu_image)):
        workers.append({"groupName": name, "replicas": group.replicas, "minReplicas": group.min_replicas,
                        "maxReplicas": group.max_replicas, "rayStartParams": _start_params(group, head=False),
                        "template": _pod(spec, group, image, env)})
    return {"rayVersion": spec.ray_version, "enableInTreeAutoscaling": True,
            "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 300},
            "headGroupSpec": {"rayStartParams": _start_params(spec.head, head=True),
                              "template": _pod(spec, spec.head, spec.image, env, ports, probe)},
            "workerGroupSpecs": workers}


def _meta(spec: DeploySpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": {"app.kubernetes.io/name": spec.name,
                                                                  "app.kubernetes.io/part-of": "vhindex"}}


def _job_entrypoint(job: JobSpec, root: Path) -> str:
    """The entry point with its overrides, after checking that its config loads with them."""
    from vhindex.config import load_config

    argv = shlex.split(job.entrypoint)
    if "--config" in argv:
        config = argv[argv.index("--config") + 1]
        load_config(root / config, job.overrides)  # raises ConfigError naming the field
    return " ".join([job.entrypoint, *(shlex.quote(o) for o in job.overrides)])


def _serve_config(spec: DeploySpec, root: Path) -> tuple[dict[str, Any], Any]:
    """The Serve config embedded in the RayService and its :class:`~vhindex.config.ServeSection`."""
    from vhindex.config import serve_settings

    path = root / spec.serve.config
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    overrides = [*spec.serve.overrides, "host=0.0.0.0"]
    if spec.serve.auth_secret:
        overrides.append("auth_token_env=VHINDEX_TOKEN")
    settings = serve_settings(str(path), overrides)
    app = dict(doc["applications"][0])
    args = dict(app.get("args") or {})
    for item in overrides:
        key, _, _ = item.partition("=")
        args[key] = getattr(settings, key)
    app["args"] = args
    doc = {**doc, "applications": [app], "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
           "proxy_location": "EveryNode"}
    return doc, settings


# ------------------------------------------------------------------------------------------ documents


def render(spec: DeploySpec, root: str | Path = ".", config_name: str = "configs/deploy/cluster.yaml",
           targets: tuple[str, ...] = ("kuberay", "launcher")) -> dict[str, str]:
    """Every file of ``infra/`` for ``targets``: ``{relative path: text}``.

    Args:
        spec: the deployment spec.
        root: the repository root (the configs the spec names are read from there).
        config_name: the spec's path as written in each file's header.
        targets: ``kuberay`` and / or ``launcher``.
    """
    from cluster.serve import serve_cluster_env

    root = Path(root)
    header = HEADER.format(config=config_name)
    out: dict[str, str] = {}

    def dump(doc: dict[str, Any]) -> str:
        return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)

    if "kuberay" in targets:
        out["k8s/raycluster.yaml"] = dump({"apiVersion": "ray.io/v1", "kind": "RayCluster",
                                           "metadata": _meta(spec, spec.name), "spec": _cluster_spec(spec)})
        for name, job in sorted(spec.jobs.items()):
            out[f"k8s/rayjob-{name}.yaml"] = dump({
                "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(spec, f"{spec.name}-{name}"),
                "spec": {"entrypoint": _job_entrypoint(job, root), "shutdownAfterJobFinishes": True,
                         "ttlSecondsAfterFinished": 3600, "backoffLimit": spec.job_backoff_limit,
                         "runtimeEnvYAML": yaml.safe_dump({"working_dir": "/opt/vhindex",
                                                           "env_vars": {"VHINDEX_STORAGE": spec.storage}}),
                         "rayClusterSpec": _cluster_spec(spec)}})
        serve_doc, settings = _serve_config(spec, root)
        env = dict(serve_cluster_env(settings))
        if spec.serve.auth_secret:
            env_token = {"name": "VHINDEX_TOKEN", "valueFrom": {"secretKeyRef": {"name": spec.serve.auth_secret,
                                                                                 "key": "token"}}}
        probe = {"httpGet": {"path": "/healthz", "port": SERVE_PORT}, "periodSeconds": 5, "failureThreshold": 3}
        cluster = _cluster_spec(spec, env, serve_ports=True, probe=probe)
        for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
            c = group["template"]["spec"]["containers"][0]
            if spec.serve.auth_secret:
                c["env"].append(env_token)
            if settings.fast_path:  # router replicas answer on their own ports on every pod
                c.setdefault("ports", []).append({"name": "serve-direct", "containerPort": settings.direct_port})
        out["k8s/rayservice.yaml"] = dump({
            "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": _meta(spec, f"{spec.name}-serve"),
            "spec": {"serveConfigV2": yaml.safe_dump(serve_doc, sort_keys=False, width=120),
                     "serviceUnhealthySecondThreshold": 300, "deploymentUnhealthySecondThreshold": 300,
                     "rayClusterConfig": cluster}})
    if "launcher" in targets:
        out["cluster/vhindex-aws.yaml"] = dump(_launcher(spec, local=False))
        out["cluster/vhindex-local.yaml"] = dump(_launcher(spec, local=True))
    return out


def _launcher(spec: DeploySpec, *, local: bool) -> dict[str, Any]:
    lc = spec.launcher
    setup = ["pip install -c constraints.txt torch==2.13.0",
             "pip install -c constraints.txt '.[ray,dask,video,s3,fast]'"]
    doc: dict[str, Any] = {"cluster_name": spec.name, "max_workers": spec.cpu_workers.max_replicas + spec.gpu_workers.max_replicas,
                           "upscaling_speed": 1.0, "idle_timeout_minutes": 5}
    if local:
        doc["provider"] = {"type": "local", "head_ip": lc.local_head_ip, "worker_ips": list(lc.local_worker_ips)}
        doc["auth"] = {"ssh_user": lc.ssh_user}
        doc["max_workers"] = len(lc.local_worker_ips)
        node_types = {
            "head": {"resources": {}, "node_config": {}, "min_workers": 0, "max_workers": 0},
            "worker": {"resources": {}, "node_config": {}, "min_workers": len(lc.local_worker_ips),
                       "max_workers": len(lc.local_worker_ips)}}
    else:
        doc["provider"] = {"type": lc.provider, "region": lc.region, "cache_stopped_nodes": False}
        doc["auth"] = {"ssh_user": lc.ssh_user}
        node_types = {
            "head": {"node_config": {"InstanceType": lc.head_instance}, "resources": {"CPU": 0},
                     "min_workers": 0, "max_workers": 0},
            "cpu": {"node_config": {"InstanceType": lc.cpu_instance}, "resources": {},
                    "min_workers": spec.cpu_workers.min_replicas, "max_workers": spec.cpu_workers.max_replicas},
            "gpu": {"node_config": {"InstanceType": lc.gpu_instance}, "resources": {},
                    "min_workers": spec.gpu_workers.min_replicas, "max_workers": spec.gpu_workers.max_replicas}}
    doc["available_node_types"] = node_types
    doc["head_node_type"] = "head"
    doc["file_mounts"] = {"/opt/vhindex": "."}
    doc["setup_commands"] = [f"cd /opt/vhindex && {c}" for c in setup]
    # the launcher's nodes are fresh machines: nothing to stop before starting Ray (and a machine-wide stop
    # would end Ray processes this config did not start)
    doc["head_start_ray_commands"] = [
        f"ray start --head --port=6379 --dashboard-host=0.0.0.0 --object-store-memory={spec.head.object_store_gb * 10**9} "
        "--autoscaling-config=~/ray_bootstrap_config.yaml"]
    doc["worker_start_ray_commands"] = [
        f"ray start --address=$RAY_HEAD_IP:6379 --object-store-memory={spec.cpu_workers.object_store_gb * 10**9}"]
    return doc


def check(rendered: dict[str, str], out: str | Path) -> list[str]:
    """Files under ``out`` that differ from (or are missing in) ``rendered``."""
    out = Path(out)
    stale = []
    for rel, text in sorted(rendered.items()):
        path = out / rel
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(str(path))
    return stale
