"""infra/ files rendered from configs/deploy/cluster.yaml (vhindex.app.deploy), validated offline.

Oracles: the KubeRay operator's published CRD schemas (``$VHINDEX_KUBERAY_CRDS``, default
``../shared/reference/kuberay-crds``) checked strictly -- an unknown field is an error, as with
``kubectl apply --validate=strict`` --, Ray Serve's own ``ServeDeploySchema`` for the embedded Serve
config, and the cluster launcher's ``ray/autoscaler/ray-schema.json``. Each validator is mutation-checked:
a misspelled field must fail it. The committed files must equal a fresh rendering.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(os.environ.get("VHINDEX_KUBERAY_CRDS", ROOT.parent / "shared" / "reference" / "kuberay-crds"))
KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
         "RayService": "ray.io_rayservices.yaml"}


def _strict(schema: object) -> object:
    """The CRD schema with every object that lists its properties closed to others (strict field validation),
    unless it preserves unknown fields; OpenAPI's int-or-string becomes either type."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators():
    if not CRDS.is_dir():
        pytest.skip(f"no KubeRay CRDs at {CRDS} (set VHINDEX_KUBERAY_CRDS)")
    import jsonschema

    out = {}
    for kind, name in KINDS.items():
        with open(CRDS / name, encoding="utf-8") as f:
            crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        out[kind] = jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))
    return out


@pytest.fixture(scope="module")
def rendered():
    from vhindex.app.deploy import load_spec, render

    return render(load_spec(ROOT / "configs/deploy/cluster.yaml"), ROOT)


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_committed_infra_files_equal_a_fresh_rendering(rendered, capsys):
    from vhindex.app.cli import main as cli_main
    from vhindex.app.deploy import check

    assert check(rendered, ROOT / "infra") == []
    assert set(rendered) >= {"k8s/raycluster.yaml", "k8s/rayjob-train-dkph.yaml", "k8s/rayjob-extract.yaml",
                             "k8s/rayjob-encode.yaml", "k8s/rayservice.yaml", "cluster/vhindex-aws.yaml",
                             "cluster/vhindex-local.yaml"}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert cli_main(["deploy", "render", "--check"]) == 0
    finally:
        os.chdir(cwd)
    # a changed spec makes the committed files stale
    stale = dict(rendered)
    stale["k8s/raycluster.yaml"] = stale["k8s/raycluster.yaml"].replace("maxReplicas: 10", "maxReplicas: 11")
    assert check(stale, ROOT / "infra") == [str(ROOT / "infra/k8s/raycluster.yaml")]


def test_kuberay_manifests_validate_against_the_crds_and_typos_fail(rendered, crd_validators):
    for rel, text in rendered.items():
        if not rel.startswith("k8s/"):
            continue
        doc = yaml.safe_load(text)
        validator = crd_validators[doc["kind"]]
        assert _errors(validator, doc) == [], rel
        # mutation checks: a misspelled field, a wrong type
        bad = copy.deepcopy(doc)
        spec = bad["spec"].get("rayClusterConfig") or bad["spec"].get("rayClusterSpec") or bad["spec"]
        spec["headGroupSpec"]["rayStartParam"] = spec["headGroupSpec"].pop("rayStartParams")
        assert any("rayStartParam" in e for e in _errors(validator, bad)), rel
        bad = copy.deepcopy(doc)
        spec = bad["spec"].get("rayClusterConfig") or bad["spec"].get("rayClusterSpec") or bad["spec"]
        spec["workerGroupSpecs"][0]["replicas"] = "two"
        assert _errors(validator, bad), rel
    job = yaml.safe_load(rendered["k8s/rayjob-train-dkph.yaml"])
    assert job["spec"]["shutdownAfterJobFinishes"] is True and "jobs/train_dkph.py" in job["spec"]["entrypoint"]
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in _errors(crd_validators["RayJob"], job))
    gpu = yaml.safe_load(rendered["k8s/raycluster.yaml"])["spec"]["workerGroupSpecs"][1]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_embedded_serve_config_is_valid_for_ray_serve_and_vhindex(rendered, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from vhindex.config import serve_settings

    service = yaml.safe_load(rendered["k8s/rayservice.yaml"])
    serve_doc = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_doc)
    (tmp_path / "serve.yaml").write_text(service["spec"]["serveConfigV2"])
    s = serve_settings(str(tmp_path / "serve.yaml"))
    assert (s.index, s.replicas, s.host, s.auth_token_env) == ("s3://vhindex-data/index/fcvid-16", 2, "0.0.0.0",
                                                               "VHINDEX_TOKEN")
    # the Serve environment of the fast path is on every pod, the token comes from the Secret
    cluster = service["spec"]["rayClusterConfig"]
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"]["value"] == "1"
        assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]["value"] == str(s.direct_port)
        assert env["VHINDEX_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "vhindex-token", "key": "token"}
    probe = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"
    serve_doc["applications"][0]["import_paht"] = serve_doc["applications"][0].pop("import_path")
    with pytest.raises(Exception, match="import_paht|import_path"):
        ServeDeploySchema.model_validate(serve_doc)


def test_launcher_configs_validate_against_rays_schema_and_typos_fail(rendered):
    import jsonschema
    import ray

    with open(Path(ray.__file__).parent / "autoscaler" / "ray-schema.json", encoding="utf-8") as f:
        validator = jsonschema.Draft7Validator(json.load(f))
    for rel in ("cluster/vhindex-aws.yaml", "cluster/vhindex-local.yaml"):
        doc = yaml.safe_load(rendered[rel])
        assert _errors(validator, doc) == [], rel
        bad = copy.deepcopy(doc)
        bad["head_node_typ"] = bad.pop("head_node_type")
        assert _errors(validator, bad), rel


def test_rendering_checks_the_configs_it_embeds(tmp_path):
    from vhindex.app.deploy import load_spec, render
    from vhindex.config import ConfigError

    spec = load_spec(ROOT / "configs/deploy/cluster.yaml")
    bad = spec.model_copy(deep=True)
    bad.jobs["extract"].overrides.append("extract.videoz=s3://x")
    with pytest.raises(ConfigError, match="videoz"):
        render(bad, ROOT)
    bad = spec.model_copy(deep=True)
    bad.serve.overrides.append("replicaz=3")
    with pytest.raises(ConfigError, match="replicaz"):
        render(bad, ROOT)
    (tmp_path / "spec.yaml").write_text((ROOT / "configs/deploy/cluster.yaml").read_text().replace("shm_size", "shm_sise"))
    with pytest.raises(ConfigError, match="shm_sise"):
        load_spec(tmp_path / "spec.yaml")
