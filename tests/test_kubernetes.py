"""deploy/kubernetes/, validated offline: nothing here runs Kubernetes. The FlinkDeployment
against the Flink Kubernetes Operator's own CRD schema (from its API jar on Maven Central,
`make build/kubernetes/...`), and the rest for what must agree across the files: names, ports,
images, versions, and the command line the job is submitted with."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

from beam_ml_flink.options import ImageClassificationOptions
from conftest import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
CRD = ROOT / "build" / "kubernetes" / "flinkdeployments.flink.apache.org-v1.yml"
WORKER_IMAGE = "beam-ml-flink-worker"


def documents() -> dict[tuple[str, str], dict]:
    """Every resource of the kustomization, by (kind, name)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    found = {}
    for file in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / file).read_text()):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), file
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.fixture(scope="module")
def schema() -> dict:
    if not CRD.is_file():
        pytest.fail(f"no CRD at {CRD}; `make {CRD.relative_to(ROOT)}` fetches it")
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def test_every_file_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"]) | set(kustomization["configurations"])
    assert listed | {"kustomization.yaml"} == {p.name for p in DEPLOY.glob("*.yaml")}


def test_the_flink_deployment_matches_the_operators_schema(schema: dict) -> None:
    deployment = documents()[("FlinkDeployment", "beam-ml-flink")]
    assert deployment["apiVersion"] == "flink.apache.org/v1beta1"
    jsonschema.validate(deployment, schema)
    # The schema does catch mistakes: a wrong type deep in the pod template fails.
    broken = copy.deepcopy(deployment)
    broken["spec"]["taskManager"]["podTemplate"]["spec"]["containers"][1]["ports"][0][
        "containerPort"
    ] = "fifty thousand"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(deployment)
    broken["spec"]["flinkVersion"] = "v1_99"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_versions_are_those_built_and_tested_here() -> None:
    deployment = documents()[("FlinkDeployment", "beam-ml-flink")]
    makefile = (ROOT / "Makefile").read_text()
    flink = re.search(r"^FLINK_VERSION := (\d+)\.(\d+)\.", makefile, re.M)
    assert flink is not None
    assert deployment["spec"]["flinkVersion"] == f"v{flink[1]}_{flink[2]}"
    assert deployment["spec"]["image"].startswith(f"flink:{flink[1]}.{flink[2]}-java17")
    beam = re.search(r"^apache-beam==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert beam is not None
    server = documents()[("Deployment", "beam-job-server")]["spec"]["template"]["spec"]
    image = server["containers"][0]["image"]
    assert image == f"apache/beam_flink{flink[1]}.{flink[2]}_job_server:{beam[1]}"


def test_each_taskmanager_has_the_worker_pool_the_job_asks_for() -> None:
    resources = documents()
    pod = resources[("FlinkDeployment", "beam-ml-flink")]["spec"]["taskManager"]["podTemplate"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert "flink-main-container" in containers  # the operator's name, which it merges into
    pool = containers["beam-worker-pool"]
    assert pool["image"] == WORKER_IMAGE and pool["args"] == ["--worker_pool"]
    # Beam's boot binary serves the pool on 50000.
    assert [p["containerPort"] for p in pool["ports"]] == [50000]

    job = resources[("Job", "beam-ml-flink-classify")]["spec"]["template"]["spec"]
    (submit,) = job["containers"]
    assert submit["image"] == WORKER_IMAGE
    assert submit["command"] == ["python", "-m", "beam_ml_flink"]
    options = PipelineOptions(submit["args"])
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == "localhost:50000"
    classification = options.view_as(ImageClassificationOptions)
    assert classification.input.endswith(".tar") and classification.output_format == "parquet"
    assert classification.model_path.startswith("gs://")

    # The job endpoint is the job server's Service, on the port its container listens on.
    service = resources[("Service", "beam-job-server")]
    server = resources[("Deployment", "beam-job-server")]
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert server["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    container_ports = {
        p["name"]: p["containerPort"]
        for p in server["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for name, port in service_ports.items():
        assert container_ports[port["targetPort"]] == port["port"], name
    for endpoint in (portable.job_endpoint, portable.artifact_endpoint):
        host, port = endpoint.split(":")
        assert host == service["metadata"]["name"]
        assert int(port) in {p["port"] for p in service_ports.values()}
    # The job server submits to the REST Service the operator makes for the deployment.
    args = server["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--flink-master=beam-ml-flink-rest:8081" in args


def test_the_kustomization_sets_the_worker_image_everywhere_it_is_used() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["name"] == WORKER_IMAGE
    # The operator's pod template is a custom resource's field: kustomize is told where it is.
    config = yaml.safe_load((DEPLOY / "kustomizeconfig.yaml").read_text())
    paths = {(f["kind"], f["path"]) for f in config["images"]}
    assert ("FlinkDeployment", "spec/taskManager/podTemplate/spec/containers[]/image") in paths
