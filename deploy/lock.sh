#!/usr/bin/env bash
# Makes the image locks: every package the images install, pinned with its sha256, for the
# images' platform (Linux x86_64, CPython 3.11, glibc 2.36: python:3.11-slim-bookworm).
#
#   deploy/requirements-image.lock    the relgraph image: the project's dependencies, the
#                                     deploy extra and the CUDA build of torch
#   deploy/requirements-mlflow.lock   the MLflow server image: mlflow, psycopg, boto3
#
# requirements.lock (the versions `make install` tests with) constrains both, so the image
# runs what the tests ran; what it does not pin (the CUDA libraries: it was made with
# the CPU build of torch) the resolver pins here. PyPI's manylinux torch is the CUDA build
# (2.13.0: CUDA 13.0, cuDNN 9.20). For another CUDA, point TORCH_INDEX_URL at PyTorch's
# index for it (https://download.pytorch.org/whl/cu128 and TORCH_SPEC=torch==2.13.0+cu128)
# and build with the same --build-arg TORCH_INDEX_URL.
#
# Run it from the repository root after changing pyproject.toml or requirements.lock:
#   deploy/lock.sh
# It only reads package metadata (pip install --dry-run); nothing is installed.
set -euo pipefail

PY="${PYTHON:-.venv/bin/python}"
INDEX_URL="${INDEX_URL:-https://pypi.org/simple}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

platforms=()
for glibc in 36 35 34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17 12 5; do
  platforms+=(--platform "manylinux_2_${glibc}_x86_64")
done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
            --platform manylinux1_x86_64 --platform linux_x86_64)

resolve() {  # resolve OUT.lock TITLE REQUIREMENTS...
  local out="$1" title="$2"
  shift 2
  printf '%s\n' "$@" > "$work/requirements.in"
  "$PY" -m pip --isolated install --quiet --dry-run --ignore-installed \
    --report "$work/report.json" --target "$work/none" \
    --only-binary=:all: "${platforms[@]}" --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none \
    --index-url "$INDEX_URL" --extra-index-url "$TORCH_INDEX_URL" \
    -r "$work/requirements.in" -c requirements.lock
  "$PY" - "$work/report.json" "$out" "$title" "$INDEX_URL" "$TORCH_INDEX_URL" <<'PY'
import json, sys
report, out, title, index, torch_index = sys.argv[1:]
rows = []
for item in json.load(open(report))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
    rows.append((name.lower().replace("_", "-"), f"{name}=={version} \\\n    --hash=sha256:{digest}"))
head = [f"# {title}",
        "# Made by deploy/lock.sh for Linux x86_64, CPython 3.11; do not edit by hand.",
        f"# index: {index}" + (f", torch: {torch_index}" if torch_index != index else ""),
        "# Install with: pip install --require-hashes --no-deps -r <this file>"]
open(out, "w").write("\n".join(head + [r for _, r in sorted(rows)]) + "\n")
print(f"{out}: {len(rows)} packages")
PY
}

mapfile -t project < <("$PY" - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["deploy"]))
PY
)
resolve deploy/requirements-image.lock "The relgraph image (deploy/Dockerfile, target relgraph)" \
  "$TORCH_SPEC" "${project[@]}"
resolve deploy/requirements-mlflow.lock "The MLflow server image (deploy/Dockerfile, target mlflow)" \
  "mlflow" "psycopg[binary]" "boto3"
