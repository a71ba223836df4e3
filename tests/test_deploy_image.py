"""The images of deploy/Dockerfile, checked without a container runtime (this machine has no
Docker daemon): the system libraries the installed wheels link against, the build step that
fails on a missing one, the hash-pinned locks, the layer order, the user, and the commit
that the pipeline logs to MLflow, each against the real files and tools.
"""

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
sys.path.insert(0, str(DEPLOY))
import check_image  # noqa: E402


def dockerfile() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined and
    comment lines dropped as Docker does."""
    lines, joined, current = [], "", None
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#"):
            continue
        joined += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            if joined.strip():
                lines.append(joined.strip())
            joined = ""
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            current = args.split()[-1] if " AS " in args.upper() else args
        out.append((current, instruction, re.sub(r"\s+", " ", args)))
    return out


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of stage `name` (of a Dockerfile of one stage: that one)."""
    parsed = dockerfile()
    stages = {s for s, _, _ in parsed}
    if name not in stages and len(stages) == 1:
        name = stages.pop()
    steps = [(i, a) for s, i, a in parsed if s == name]
    assert steps, f"deploy/Dockerfile has no stage {name}"
    return steps


def _lock(path: Path) -> dict[str, str]:
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    return {norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.M)}


@pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("ldd") is None,
                    reason="needs Debian's dpkg and ldd")
def test_image_installs_the_system_libraries_the_wheels_link_against():
    """What the wheels of this environment (the image's, but for torch's CUDA build) take
    from the system, by Debian package: each is installed by the Dockerfile or in every
    Debian image."""
    libs = check_image.system_libraries(check_image.site_packages())
    assert not check_image.missing(libs), check_image.missing(libs)
    installed = set()
    for instruction, args in stage("relgraph"):
        if instruction == "RUN" and "apt-get install" in args:
            if "system-packages.txt" in args:
                text = (DEPLOY / "system-packages.txt").read_text()
                installed |= {line.split("#")[0].strip() for line in text.splitlines()} - {""}
            named = args.split("apt-get install", 1)[1].split("&&")[0]
            installed |= {w for w in shlex.split(named) if not w.startswith("-")}
    needed = {}
    for soname, entry in libs.items():
        package = check_image.debian_package(entry["path"])
        assert package, f"{entry['path']} ({soname}) belongs to no Debian package"
        needed.setdefault(package, []).append(f"{soname} for {entry['needed_by'][0]}")
    lacking = {p: why for p, why in needed.items()
               if p not in installed and p not in check_image.BASE_PACKAGES}
    assert not lacking, f"deploy/Dockerfile does not install {lacking}"
    assert "libgomp1" in needed  # LightGBM's OpenMP: the library this test was written for


def test_the_build_check_fails_on_a_library_nothing_provides(tmp_path, capsys):
    """check_image, run on a wheel whose library links against a soname no one has."""
    lightgbm = next(check_image.site_packages().glob("lightgbm/lib/lib_lightgbm.so"))
    lib = tmp_path / "site" / "broken" / "lib_broken.so"
    lib.parent.mkdir(parents=True)
    blob = lightgbm.read_bytes()
    assert b"libgomp.so.1\x00" in blob
    lib.write_bytes(blob.replace(b"libgomp.so.1\x00", b"libgomx.so.1\x00"))
    assert check_image.main(["--site", str(tmp_path / "site"), "--no-import"]) == 1
    err = capsys.readouterr().err
    assert "libgomx.so.1 (needed by broken/lib_broken.so) is in no wheel and not on the system" in err


def test_image_locks_pin_every_package_with_its_hash_and_cuda_torch():
    image, mlflow = DEPLOY / "requirements-image.lock", DEPLOY / "requirements-mlflow.lock"
    for path in (image, mlflow):
        entries = re.split(r"\n(?=[A-Za-z])", path.read_text().split("\n", 4)[-1].strip())
        for entry in entries:
            assert re.fullmatch(r"\S+==\S+ \\\n    --hash=sha256:[0-9a-f]{64}", entry), entry
    pins, tested = _lock(image), _lock(REPO / "requirements.lock")
    # torch is PyPI's CUDA build, with the CUDA libraries it pulls pinned
    assert pins["torch"] == tested["torch"] == "2.13.0"
    for cuda in ("cuda-toolkit", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cublas",
                 "triton", "cuda-bindings"):
        assert cuda in pins, cuda
    # the image runs the versions the tests ran
    assert {n: v for n, v in pins.items() if n in tested and tested[n] != v} == {}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["deploy"]:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement)[0]).lower()
        assert name in pins, f"{name} (pyproject.toml) is not in {image.name}"
    server = _lock(mlflow)
    assert server["mlflow"] == tested["mlflow"] and {"boto3", "psycopg", "psycopg-binary"} <= set(server)
    assert "torch" not in server


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore: the last pattern that matches the path or a parent wins."""
    parts = path.split("/")
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatch("/".join(parts[:i]), pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pattern[3:])):
                verdict = not negate
                break
    return verdict


def test_dockerfile_layers_user_and_build_check():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    steps = stage("relgraph")
    order = [f"{i} {a}" for i, a in steps]

    def first(pattern: str) -> int:
        found = [k for k, s in enumerate(order) if re.search(pattern, s)]
        assert found, f"deploy/Dockerfile has no {pattern}"
        return found[0]

    # dependencies (hash-pinned) in a layer before the code
    deps = first(r"^RUN pip install --require-hashes .*requirements-image\.lock")
    assert deps < first(r"^COPY pipeline ") and deps < first(r"^COPY assets ")
    # a non-root user whose uid/gid are the pods' runAsUser and fsGroup
    users = [a for i, a in steps if i == "USER"]
    assert users == ["10001:10001"]
    pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    deployment = values["dagster-user-deployments"]["deployments"][0]["podSecurityContext"]
    theirs = instance["run_launcher"]["config"]["run_k8s_config"]["pod_spec_config"]["security_context"]
    for context in (pod["securityContext"], deployment):
        assert (context["runAsUser"], context["fsGroup"], context["runAsNonRoot"]) == (10001, 10001, True)
    assert (theirs["run_as_user"], theirs["fs_group"]) == (10001, 10001)
    # the build step that imports lightgbm and torch and loads the code location, as the user
    check = first(r"^RUN python deploy/check_image\.py --commit \"\$GIT_COMMIT\"")
    assert check > first(r"^USER ") and first(r"^ARG GIT_COMMIT") < check
    assert first(r"^RUN apt-get update .*system-packages\.txt") < deps
    assert "PGSSLMODE=require" in " ".join(a for _, i, a in dockerfile() if i == "ENV")
    # every file copied in is let through by the .dockerignore, and exists
    for name in ("relgraph", "mlflow"):
        for instruction, args in stage(name):
            if instruction == "COPY":
                for source in args.split()[:-1]:
                    assert (REPO / source).exists(), source
                    assert not _ignored(source, ignore), f"{source} is kept out by the .dockerignore"
    assert _ignored(".git/HEAD", ignore) and _ignored(".venv/bin/python", ignore)
    # the code location the chart starts is in the image
    grpc = values["dagster-user-deployments"]["deployments"][0]["dagsterApiGrpcArgs"]
    assert grpc[:2] == ["-f", "/opt/relgraph/deploy/k8s_definitions.py"], grpc
    assert "COPY deploy/k8s_definitions.py deploy/warehouse.py deploy/check_image.py ./deploy/" in order
    assert "WORKDIR /opt/relgraph" in order
    # the MLflow server image: its own lock and the script the README runs
    server = [f"{i} {a}" for i, a in stage("mlflow")]
    assert any(re.search(r"pip install --require-hashes .*requirements-mlflow\.lock", s) for s in server)
    assert "COPY deploy/mlflow-server.sh /usr/local/bin/mlflow-server.sh" in server
    assert 'CMD ["/usr/local/bin/mlflow-server.sh"]' in server and "USER 10001:10001" in server


def _commit_step() -> str:
    runs = [a for i, a in stage("relgraph") if i == "RUN" and "GIT_COMMIT" in a and ".git" in a]
    assert len(runs) == 1, "deploy/Dockerfile has no step that records GIT_COMMIT in .git"
    return runs[0]


def test_the_image_records_the_commit_where_the_pipeline_reads_it(tmp_path, monkeypatch):
    """The Dockerfile's own commit step, run in a copy of the image's layout; then the
    pipeline's git_commit() (what MLflow gets as git_commit) answers that commit."""
    from pipeline.training import tracking

    root = tmp_path / "opt" / "relgraph"
    (root / "pipeline" / "training").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "GIT_CONFIG_SYSTEM": str(tmp_path / "gitconfig"),
           "HOME": str(tmp_path)}
    commit = "0123456789abcdef0123456789abcdef01234567"
    done = subprocess.run(["sh", "-c", _commit_step()], cwd=root, env={**env, "GIT_COMMIT": commit},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tracking, "__file__", str(root / "pipeline" / "training" / "tracking.py"))
    assert tracking.git_commit() == commit
    assert f"directory = {root}" in (tmp_path / "gitconfig").read_text()  # safe for any uid
    # A build without the commit stops, saying how to pass it.
    (root / ".git").rename(tmp_path / "old-git")
    done = subprocess.run(["sh", "-c", _commit_step()], cwd=root, env={**env, "GIT_COMMIT": ""},
                          capture_output=True, text=True)
    assert done.returncode != 0 and "--build-arg GIT_COMMIT=$(git rev-parse HEAD)" in done.stderr
