"""The shipped cluster files must run.

Every Ray autoscaler YAML in cluster/ (a file without `apiVersion`) must pass the JSON schema packaged with
the installed Ray and the checks `ray up` makes before it contacts any cloud; the cloud files must scale GPU
workers from zero, install nothing at boot and start Ray with token authentication. Every KubeRay manifest
must have the fields KubeRay requires, run the project image (docker/Dockerfile) at the Ray version pinned
in pyproject.toml, and (a RayJob) run a jobs/ script with flags it accepts. Nothing remote is built or
contacted: the files are only read.
"""

import ast
import copy
import functools
import itertools
import json
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CLUSTER_README = CLUSTER_DIR / "README.md"
IMAGE_CODE_DIR = "/home/ray/raymmrec/"  # where docker/Dockerfile puts the repository


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _is_kuberay(doc) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc


CLUSTER_FILES = sorted(CLUSTER_DIR.glob("*.y*ml"))
AUTOSCALER_FILES = [p for p in CLUSTER_FILES if not _is_kuberay(_load(p))]
KUBERAY_FILES = [p for p in CLUSTER_FILES if _is_kuberay(_load(p))]
CLOUD_FILES = [p for p in AUTOSCALER_FILES if _load(p)["provider"]["type"] in ("aws", "gcp")]
#: clusters on this one machine (Ray's fake node provider), started by cluster/local_autoscaling.py, not `ray up`
FAKE_FILES = [p for p in AUTOSCALER_FILES if _load(p)["provider"]["type"] == "fake_multinode"]
UP_FILES = [p for p in AUTOSCALER_FILES if p not in FAKE_FILES]  # the files `ray up` takes


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pinned(package: str) -> str:
    """The `==` version pyproject.toml pins for `package` (extras allowed)."""
    for dep in _pyproject()["project"]["dependencies"]:
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


def _prepared(path: Path, ray_schema_tools) -> dict:
    """The config as `ray up` uses it: the file merged with the provider's defaults.yaml."""
    _, _, prepare_config, _ = ray_schema_tools
    return prepare_config(copy.deepcopy(_load(path)))


# ---------------------------------------------------------------------------------------------
# which files there are


def test_cluster_dir_holds_every_kind():
    providers = {_load(p)["provider"]["type"] for p in AUTOSCALER_FILES}
    kinds = {_load(p)["kind"] for p in KUBERAY_FILES}
    assert {"aws", "gcp", "local", "fake_multinode"} <= providers, [p.name for p in AUTOSCALER_FILES]
    assert {"RayCluster", "RayJob"} <= kinds, [p.name for p in KUBERAY_FILES]


def test_readme_names_files_that_exist():
    text = CLUSTER_README.read_text()
    named = set(re.findall(r"(?:cluster|docker|jobs)/[\w.-]+\.(?:ya?ml|py|md)|docker/Dockerfile", text))
    table = set(re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE))  # the file table, relative to cluster/
    assert named and table, "cluster/README.md names no file"
    missing = sorted([n for n in named if not (ROOT / n).is_file()]
                     + [n for n in table if not (CLUSTER_DIR / n).resolve().is_file()])
    assert not missing, f"cluster/README.md names files that do not exist: {missing}"
    for path in CLUSTER_FILES:
        assert path.name in text, f"cluster/README.md does not mention {path.name}"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_key_is_commented(path):
    # Each key says what it does: a comment on its line, or a comment line just above it, indented no
    # deeper than the key (a deeper one continues the comment of the key before).
    lines = path.read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        m = re.match(r"(\s*(?:-\s+)?)[\w./~-]+\s*:(\s|$)", line)
        if not m or re.search(r"(^|\s)#", line):
            continue
        above = lines[i - 1] if i else ""
        if not (above.lstrip().startswith("#") and above.index("#") <= len(m.group(1)) + 2):
            bare.append(f"{i + 1}: {line.strip()}")
    assert not bare, f"{path.name}: keys without a comment: {bare}"


# ---------------------------------------------------------------------------------------------
# Ray autoscaler files (`ray up`)


@pytest.mark.parametrize("path", AUTOSCALER_FILES, ids=lambda p: p.name)
def test_autoscaler_file_matches_ray_schema(path, ray_schema_tools):
    # The file as written, against the packaged schema: no key the schema does not know (top-level
    # min_workers, say, which Ray only tolerates for the local provider by deleting it).
    jsonschema, schema, _, _ = ray_schema_tools
    jsonschema.validate(_load(path), schema)


@pytest.mark.parametrize("path", UP_FILES, ids=lambda p: p.name)
def test_autoscaler_file_passes_ray_up_checks(path, ray_schema_tools):
    # What `ray up` does before it reaches a node provider: merge the provider's defaults, then validate.
    _, _, _, validate_config = ray_schema_tools
    validate_config(_prepared(path, ray_schema_tools))


@pytest.mark.parametrize("path", UP_FILES, ids=lambda p: p.name)
def test_head_runs_the_autoscaler(path):
    # Worker nodes (worker_ips too) are started by the autoscaler on the head; without this flag the head
    # runs a read-only monitor and the cluster never gets past its head node.
    head_start = [c for c in _load(path)["head_start_ray_commands"] if "ray start" in c]
    assert head_start and all("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in head_start)


def _start_env(config: dict, commands: list[str]) -> dict[str, str]:
    """Environment variables `ray start` sees: `docker run --env/-e` options, then `VAR=value ray start`."""
    env: dict[str, str] = {}
    for opt in (config.get("docker") or {}).get("run_options", []):
        words = shlex.split(opt)
        for flag, value in itertools.pairwise(words):
            if flag in ("-e", "--env") and "=" in value:
                env.update([value.split("=", 1)])
    starts = [c for c in commands if "ray start" in c]
    assert starts, commands
    prefixed = [dict(re.findall(r"(?:^|\s)(RAY_AUTH_\w+)=(\S+)", c.split("ray start")[0])) for c in starts]
    common = {k: v for k, v in prefixed[0].items() if all(p.get(k) == v for p in prefixed)}
    return {**env, **common}


@pytest.mark.parametrize("path", UP_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("role", ["head", "worker"])
def test_autoscaler_nodes_start_with_token_auth(path, role):
    # Ray 2.60 enables token authentication by default only for local `ray.init()` clusters; on these the
    # dashboard listens on 0.0.0.0, so every node must run with the token, and the same token everywhere.
    config = _load(path)
    env = _start_env(config, config[f"{role}_start_ray_commands"])
    assert env.get("RAY_AUTH_MODE") == "token", f"{role} nodes start Ray without RAY_AUTH_MODE=token"
    token = env.get("RAY_AUTH_TOKEN_PATH", "")
    mounts = config.get("file_mounts") or {}
    home = "/home/ray" if config.get("docker") else "$HOME"
    dests = {d.replace("~", home, 1).rstrip("/") for d in mounts}
    assert token and str(Path(token).parent) in dests, (
        f"RAY_AUTH_TOKEN_PATH={token!r} is not in a folder that file_mounts copies to every node ({sorted(mounts)})")
    assert all("raymmrec" in src and "cluster-auth" in src for src in mounts.values()), mounts  # README's folder


@pytest.mark.parametrize("path", [p for p in AUTOSCALER_FILES if _load(p).get("docker")], ids=lambda p: p.name)
def test_autoscaler_nodes_run_the_project_image_and_install_nothing(path, ray_schema_tools):
    config = _load(path)
    docker = config["docker"]
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            _assert_project_image(docker[key])
    # The image holds the environment. Checked on the prepared config: keys the file leaves out come from
    # Ray's provider defaults, which pip-install boto3 (AWS) or google-api-python-client (GCP) on the head.
    prepared = _prepared(path, ray_schema_tools)
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert not prepared.get(key), f"{path.name}: {key} would run {prepared[key]} at every node start"
    for name, node_type in prepared["available_node_types"].items():
        assert not node_type.get("worker_setup_commands"), f"{name} installs {node_type['worker_setup_commands']}"
        assert "image" not in (node_type.get("docker") or {}), f"{name} overrides the image"


@pytest.mark.parametrize("path", FAKE_FILES, ids=lambda p: p.name)
def test_local_fake_cluster_is_what_its_provider_and_autoscaler_take(path, ray_schema_tools):
    # What the head's autoscaler does with the file (it validates it as written, without provider
    # defaults), and what the fake provider needs: its head type name, the flags that keep it from SSH and
    # relaunches, and resources stated (it has no machine type to infer them from).
    from raymmrec.ray.local_cluster import fake_cluster_config

    _, _, _, validate_config = ray_schema_tools
    config = fake_cluster_config(path, 12345)
    validate_config(config)
    assert config["provider"]["gcs_address"] == "127.0.0.1:12345"
    assert all(config["provider"][k] is True for k in ("disable_node_updaters", "disable_launch_config_check"))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU", 0) == 0 and head["max_workers"] == 0, "a small head that takes no trial"
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert workers, "no worker node type"
    for name, t in workers.items():
        assert t["resources"]["CPU"] == 1 and t["min_workers"] == 0, f"{name}: 1-CPU nodes that scale to zero"
        assert 2 <= t["max_workers"] <= config["max_workers"], f"{name}: room for two workers on two nodes"
        assert t["resources"]["object_store_memory"] <= 1e9, f"{name}: Ray's default (30% of the RAM) per node"


@pytest.mark.parametrize("path", FAKE_FILES, ids=lambda p: p.name)
def test_ray_up_does_not_take_the_fake_provider(path, ray_schema_tools):
    # Why cluster/local_autoscaling.py exists (the comment atop the file and docs/clusters.md say so): `ray up`
    # stops at the provider's missing defaults file in Ray 2.60. When a Ray release ships it, this fails:
    # try `RAY_FAKE_CLUSTER=1 ray up` again and update the docs.
    with pytest.raises(FileNotFoundError, match="fake_multi_node/example.yaml"):
        _prepared(path, ray_schema_tools)


def _is_gpu_type(provider: str, node_type: dict) -> bool:
    if node_type.get("resources", {}).get("GPU", 0) >= 1:
        return True
    # AWS fills resources in from the instance type: g* and p* families carry NVIDIA GPUs.
    return provider == "aws" and re.match(r"[gp]\d", node_type["node_config"].get("InstanceType", "")) is not None


@pytest.mark.parametrize("path", CLOUD_FILES, ids=lambda p: p.name)
def test_cloud_cluster_has_cpu_head_and_gpu_workers_from_zero(path, ray_schema_tools):
    config = _load(path)
    provider = config["provider"]["type"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not _is_gpu_type(provider, head), "the head must be a CPU node: GPUs belong to workers that scale"
    gpu_types = {n: t for n, t in types.items() if n != config["head_node_type"] and _is_gpu_type(provider, t)}
    assert gpu_types, f"{path.name} has no GPU worker type"
    for name, t in gpu_types.items():
        assert t.get("min_workers", 0) == 0, f"{name}: GPU workers must scale to zero when idle"
        assert 1 <= t["max_workers"] <= config["max_workers"], f"{name}: max_workers out of the cluster's bound"
    if provider == "gcp":
        # GCP cannot infer resources from the machine type: the autoscaler plans with what the file says.
        for name, t in types.items():
            assert t["resources"].get("CPU", 0) >= 1, f"{name}: state its CPUs in resources"
        for name, t in gpu_types.items():
            assert t["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", f"{name}: GPU VMs cannot migrate"
    prepared = _prepared(path, ray_schema_tools)
    assert prepared["available_node_types"][config["head_node_type"]]["max_workers"] == 0


# ---------------------------------------------------------------------------------------------
# KubeRay manifests


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _gpus(group: dict) -> int:
    limits = _containers(group)[0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def _cpus(group: dict) -> float:
    cpu = str(_containers(group)[0]["resources"]["limits"]["cpu"])
    return int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_manifest_has_required_fields(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in ("RayCluster", "RayJob"), doc["kind"]
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), f"{name!r} is not a DNS-1123 label"
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == RAY_PIN, f"rayVersion {spec['rayVersion']} != ray=={RAY_PIN} in pyproject.toml"
    assert spec.get("authOptions", {}).get("mode") == "token", "Ray token authentication (KubeRay >= 1.5.1)"

    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    workers = spec["workerGroupSpecs"]
    assert workers, "no worker group"
    names = [g["groupName"] for g in workers]
    assert len(set(names)) == len(names), f"duplicate groupName: {names}"
    for g in workers:
        assert isinstance(g["rayStartParams"], dict), f"{g['groupName']}: rayStartParams is required"
        lo, n, hi = g["minReplicas"], g["replicas"], g["maxReplicas"]
        assert 0 <= lo <= n <= hi and hi >= 1, f"{g['groupName']}: replicas {n} outside [{lo}, {hi}]"
        if not spec.get("enableInTreeAutoscaling"):
            assert lo == n == hi, f"{g['groupName']}: without the autoscaler nothing moves replicas"
    assert any(_gpus(g) >= 1 for g in workers), "no GPU worker group"
    assert _gpus(head) == 0, "the head takes no GPU: trials and training workers run on GPU workers"

    images = set()
    for g in _groups(spec):
        containers = _containers(g)
        assert containers and all(c.get("name") and c.get("image") for c in containers), containers
        images.add(containers[0]["image"])  # KubeRay runs Ray in the first container
    assert len(images) == 1, f"head and workers must run one image: {images}"
    _assert_project_image(images.pop())


@pytest.mark.parametrize("path", [p for p in KUBERAY_FILES if _load(p)["kind"] == "RayCluster"], ids=lambda p: p.name)
def test_raycluster_autoscales_gpu_workers_from_zero(path):
    spec = _load(path)["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "keep trials off the head"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if _gpus(g) >= 1]
    assert gpu_groups and all(g["minReplicas"] == 0 for g in gpu_groups), "GPU groups must scale to zero"


@functools.cache
def _help(script: str) -> str:
    """`python <script> --help`: the flags the script accepts (its parser, without running anything)."""
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, f"{script} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


def _assert_flags_accepted(words: list[str], where: str) -> str:
    """The jobs/ script the command runs; every --flag in it is one the script's parser knows."""
    script = next((w for w in words if w.endswith(".py")), None)
    assert script, f"{where}: no Python script in {' '.join(words)}"
    rel = script.removeprefix(IMAGE_CODE_DIR)
    assert rel.startswith("jobs/") and (ROOT / rel).is_file(), f"{where}: {script} is not a script in jobs/"
    known = set(re.findall(r"--[\w-]+", _help(rel)))
    unknown = [w.split("=")[0] for w in words[words.index(script) + 1:]
               if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"{where}: {rel} does not accept {unknown}"
    return rel


def _flag(words: list[str], name: str) -> str:
    assert name in words, f"entrypoint lacks {name}"
    return words[words.index(name) + 1]


@pytest.mark.parametrize("path", [p for p in KUBERAY_FILES if _load(p)["kind"] == "RayJob"], ids=lambda p: p.name)
def test_rayjob_entrypoint_runs_a_repo_job_that_fits_its_cluster(path):
    job = _load(path)
    assert job["spec"]["shutdownAfterJobFinishes"] is True, "the job's cluster must not outlive it (GPU cost)"
    words = shlex.split(job["spec"]["entrypoint"])
    script = words[words.index(next(w for w in words if w.endswith(".py")))]
    assert script.startswith(IMAGE_CODE_DIR), "the code is baked in at /home/ray/raymmrec (docker/)"
    rel = _assert_flags_accepted(words, path.name)
    if rel in ("jobs/tune.py", "jobs/reproduce.py"):
        # Trials sized by hand must fit the GPU pods: per pod, trials x GPU <= its GPUs and x CPU <= its CPUs.
        gpu = float(_flag(words, "--gpus-per-trial"))
        cpu = float(_flag(words, "--cpus-per-trial"))
        concurrent = int(_flag(words, "--max-concurrent"))
        pods = [g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if _gpus(g) >= 1]
        per_pod = min(int(_gpus(g) / gpu) for g in pods) if gpu else 0
        assert per_pod >= 1, f"a trial asks for {gpu} GPU, more than a pod has"
        assert all(per_pod * cpu <= _cpus(g) for g in pods), f"{per_pod} trials x {cpu} CPUs exceed a GPU pod"
        assert concurrent <= per_pod * sum(g["maxReplicas"] for g in pods), "more concurrent trials than fit"
    else:
        assert "--wait-for-resources" in words  # worker pods may still be pending when the job starts


def _job_commands(text: str) -> list[list[str]]:
    """Each shell command in ``text`` that runs a jobs/ script (continuations joined), from the script on."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0]
        if re.search(r"jobs/\w+\.py", line):
            words = shlex.split(line)
            commands.append(words[words.index("--") + 1:] if "--" in words else words)
    return commands


def test_documented_job_commands_use_flags_the_scripts_accept():
    # The commands users copy: cluster/README.md's code blocks and the usage comments atop each cluster file.
    readme = _job_commands("\n".join(re.findall(r"```bash\n(.*?)```", CLUSTER_README.read_text(), re.DOTALL)))
    assert {w for cmd in readme for w in cmd if w.endswith(".py")} >= {
        "/home/ray/raymmrec/jobs/tune.py", "/home/ray/raymmrec/jobs/reproduce.py"}, readme
    for words in readme:
        _assert_flags_accepted(words, "cluster/README.md")
    for path in CLUSTER_FILES:
        header = re.match(r"(?:#[^\n]*\n)*", path.read_text()).group(0)
        for words in _job_commands(re.sub(r"^# ?", "", header, flags=re.MULTILINE)):
            _assert_flags_accepted(words, f"the comment atop {path.name}")


# ---------------------------------------------------------------------------------------------
# the image (docker/Dockerfile)


def test_dockerfile_builds_from_the_pinned_versions():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE).group(1)
    assert base.startswith(f"rayproject/ray:{RAY_PIN}-py311-cu"), base
    # CUDA torch at the pinned version goes in before the project, which is then installed without deps.
    torch_at = text.index(f"pip install --no-cache-dir torch=={_pinned('torch')}")
    assert torch_at < text.index("pip install --no-cache-dir --no-deps -e .")
    assert f"WORKDIR {IMAGE_CODE_DIR.rstrip('/')}" in text
    # The dependencies come from pyproject.toml itself, so a package added there reaches the image.
    assert "p['dependencies']" in text and "p['optional-dependencies']['features']" in text
    assert "COPY --chown=ray:users pyproject.toml" in text
    for folder in ("raymmrec", "jobs"):
        assert re.search(rf"^COPY .*\b{folder} \./{folder}$", text, re.MULTILINE), f"the image lacks {folder}/"


def _requirement_closure(requirements: list[str]) -> set[str]:
    """Distributions `pip install` of ``requirements`` brings, from the installed packages' metadata."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, names, todo = set(), set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            deps = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for dep in map(Requirement, deps):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(dep)
    return names


def test_image_gets_every_package_the_code_imports():
    # The image installs pyproject.toml's dependencies and nothing else: a third-party module imported by
    # raymmrec/ or jobs/ must come from one of them (directly or as their dependency), or the job fails on
    # the cluster, after hours of trials, while passing on a development machine that happens to have it.
    import importlib.metadata as md

    pytest.importorskip("packaging")
    from packaging.utils import canonicalize_name

    modules: dict[str, str] = {}
    for path in sorted([*(ROOT / "raymmrec").rglob("*.py"), *(ROOT / "jobs").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "raymmrec":
                    modules.setdefault(top, str(path.relative_to(ROOT)))
    installed = md.packages_distributions()
    project = _pyproject()["project"]
    closure = _requirement_closure([*project["dependencies"], *project["optional-dependencies"]["features"]])
    missing = []
    for module, where in sorted(modules.items()):
        dists = {canonicalize_name(d) for d in installed.get(module, [])}
        if not dists:
            missing.append(f"{module} (imported in {where}; not installed here, so no distribution to check)")
        elif not dists & closure:
            missing.append(f"{module} (imported in {where}; distribution {sorted(dists)})")
    assert not missing, "not installed by pyproject.toml's dependencies, so not in the image: " + "; ".join(missing)


def test_package_data_names_files_that_exist():
    # setuptools passes over a package-data pattern that matches nothing without a word, so a stale one
    # (files moved or never written) hides until a wheel lacks what the code reads.
    setuptools = _pyproject().get("tool", {}).get("setuptools", {})
    for package, patterns in setuptools.get("package-data", {}).items():
        for pattern in patterns:  # "*": a pattern for every package, so one match anywhere will do
            home = ROOT / ("raymmrec" if package == "*" else package.replace(".", "/"))
            found = home.rglob(pattern) if package == "*" else home.glob(pattern)
            assert any(True for _ in found), f"pyproject.toml: package-data {package!r} names {pattern!r}, no file"


# ---------------------------------------------------------------------------------------------
# cluster/local_autoscaling.py down: only its own cluster's processes


def test_down_stops_the_marked_processes_and_their_children_only(tmp_path, monkeypatch):
    import raymmrec.ray.local_cluster as lc

    if not Path("/proc/self/stat").exists():
        pytest.skip("reads /proc (Linux)")
    marker = str(tmp_path / "cluster")  # a cluster's folder, named on its processes' command lines
    sleeper = "import time; time.sleep(60)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {sleeper!r}]); time.sleep(60)"
    ours = subprocess.Popen([sys.executable, "-c", parent, marker])
    other = subprocess.Popen([sys.executable, "-c", sleeper, str(tmp_path / "other")])
    # a Ray client server names its cluster's GCS address, not its folder; another port that ends alike
    gcs = 50123
    client = subprocess.Popen([sys.executable, "-c", sleeper, f"--address=192.0.2.9:{gcs}", "--port=10001"])
    decoy = subprocess.Popen([sys.executable, "-c", sleeper, f"--address=192.0.2.9:1{gcs}"])
    try:
        deadline = time.time() + 30
        while len(found := lc.cluster_processes(marker)) < 2:  # the marked process and the child it starts
            assert time.time() < deadline, "the child never started"
            time.sleep(0.1)
        assert set(lc.cluster_processes(marker, gcs)) == {*found, client.pid}
        assert lc.stop_processes(str(tmp_path / "nothing"), gcs) == 1 and client.wait(timeout=10) != 0
        assert decoy.poll() is None
        real, seen = lc._stat, set()

        def reused(pid):  # every pid names another process once it has been looked up
            st = real(pid)
            if st is None or pid not in seen:
                seen.add(pid)
                return st
            return st[0], "another start time"

        with monkeypatch.context() as m:
            m.setattr(lc, "_stat", reused)
            lc.stop_processes(marker)
        assert all(real(p) is not None and real(p)[0] != "Z" for p in found), "signalled a pid that was reused"
        assert lc.stop_processes(marker) == 2
        assert ours.wait(timeout=10) != 0
        assert all(real(p) is None or real(p)[0] == "Z" for p in found)
        assert other.poll() is None  # not this cluster's
    finally:
        for proc in (ours, other, client, decoy):
            proc.kill()
            proc.wait()
