"""The shipped cluster files must run.

Every Ray autoscaler YAML in cluster/ (a file without `apiVersion`) must pass the JSON schema packaged with
the installed Ray and the checks `ray up` makes before it contacts any cloud. The KubeRay manifest and the
AWS file must run the project image (docker/Dockerfile) at the Ray version pinned in pyproject.toml.
"""

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _is_kuberay(doc) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc


CLUSTER_FILES = sorted(CLUSTER_DIR.glob("*.y*ml"))
AUTOSCALER_FILES = [p for p in CLUSTER_FILES if not _is_kuberay(_load(p))]
KUBERAY_FILES = [p for p in CLUSTER_FILES if _is_kuberay(_load(p))]


def _pinned(package: str) -> str:
    """The `==` version pyproject.toml pins for `package` (extras allowed)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", dep.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no {package}==...")


RAY_PIN = _pinned("ray")


def _assert_project_image(image: str) -> None:
    """The project image (not Ray's stock one), tagged with the pinned Ray version: ...:<v>-ray<ray>-cu<cuda>."""
    assert not image.startswith("rayproject/"), f"{image}: Ray's stock image has no torch; use docker/'s image"
    m = re.search(r":[^:/]*-ray(\d+\.\d+\.\d+)-cu\d+$", image)
    assert m, f"{image}: tag must name the Ray and CUDA versions, e.g. 0.1.0-ray{RAY_PIN}-cu130"
    assert m.group(1) == RAY_PIN, f"{image} holds Ray {m.group(1)}, pyproject.toml pins ray=={RAY_PIN}"


@pytest.fixture(scope="module")
def ray_schema_tools():
    pytest.importorskip("ray", reason="ray is not importable: its autoscaler schema is what the files must pass")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a ray[default] dependency) is missing")
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    return jsonschema, schema, prepare_config, validate_config


def test_cluster_dir_holds_both_kinds():
    assert AUTOSCALER_FILES and KUBERAY_FILES, [p.name for p in CLUSTER_FILES]


@pytest.mark.parametrize("path", AUTOSCALER_FILES, ids=lambda p: p.name)
def test_autoscaler_file_matches_ray_schema(path, ray_schema_tools):
    # The file as written, against the packaged schema: no key the schema does not know (top-level
    # min_workers, say, which Ray only tolerates for the local provider by deleting it).
    jsonschema, schema, _, _ = ray_schema_tools
    jsonschema.validate(_load(path), schema)


@pytest.mark.parametrize("path", AUTOSCALER_FILES, ids=lambda p: p.name)
def test_autoscaler_file_passes_ray_up_checks(path, ray_schema_tools):
    # What `ray up` does before it reaches a node provider: merge the provider's defaults, then validate.
    _, _, prepare_config, validate_config = ray_schema_tools
    validate_config(prepare_config(copy.deepcopy(_load(path))))


@pytest.mark.parametrize("path", AUTOSCALER_FILES, ids=lambda p: p.name)
def test_head_runs_the_autoscaler(path):
    # Worker nodes (worker_ips too) are started by the autoscaler on the head; without this flag the head
    # runs a read-only monitor and the cluster never gets past its head node.
    head_start = [c for c in _load(path)["head_start_ray_commands"] if "ray start" in c]
    assert head_start and all("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in head_start)


@pytest.mark.parametrize("path", AUTOSCALER_FILES, ids=lambda p: p.name)
def test_autoscaler_docker_image_is_the_project_image(path):
    docker = _load(path).get("docker")
    if not docker:
        pytest.skip(f"{path.name} runs on the hosts' own Python, not in a container")
    _assert_project_image(docker["image"])
    assert not _load(path).get("setup_commands"), "the image holds the environment: nothing to install at boot"


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_rayjob_runs_the_project_image(path):
    job = _load(path)
    assert job["kind"] == "RayJob"
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, f"head and workers must run one image: {images}"
    _assert_project_image(images.pop())
    assert cluster["rayVersion"] == RAY_PIN

    entrypoint = job["spec"]["entrypoint"].split()
    assert "--wait-for-resources" in entrypoint  # worker pods may still be pending when the job starts
    script = next(a for a in entrypoint if a.endswith(".py"))
    assert script.startswith("/home/ray/raymmrec/"), "the code is baked in at /home/ray/raymmrec (docker/)"
    assert (ROOT / script.removeprefix("/home/ray/raymmrec/")).is_file(), script


def test_dockerfile_builds_from_the_pinned_versions():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{RAY_PIN}-py311-cu"), base
    # CUDA torch at the pinned version goes in before the project, which is then installed without deps.
    torch_at = text.index(f"pip install --no-cache-dir torch=={_pinned('torch')}")
    assert torch_at < text.index("pip install --no-cache-dir --no-deps -e .")
    assert "WORKDIR /home/ray/raymmrec" in text
