#!/usr/bin/env bash
# The MLflow tracking server of a deployment: runs, params and metrics in PostgreSQL, artifacts
# (plots, checkpoints, registered models) in S3 or any S3-compatible store, served through
# the tracking server, so that clients (run and step pods, laptops) need only its URL:
#   MLFLOW_TRACKING_URI=http://mlflow.<namespace>.svc:5000
#
# Environment (all required but the last ones):
#   MLFLOW_DB_HOST, MLFLOW_DB_NAME, MLFLOW_DB_USER, MLFLOW_DB_PASSWORD   the PostgreSQL backend
#   MLFLOW_ARTIFACTS_DESTINATION   e.g. s3://my-bucket/relgraph/mlflow
#   MLFLOW_ALLOWED_HOSTS   the Host headers clients send, comma-separated, e.g.
#                          mlflow.relgraph.svc:5000,mlflow:5000; MLflow refuses any other
#                          (403, "Invalid Host header"), /health aside
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the pod's IAM role: S3 credentials
#   MLFLOW_DB_PORT (5432), MLFLOW_PORT (5000), MLFLOW_WORKERS (4)
#   MLFLOW_S3_ENDPOINT_URL   for an S3-compatible store (MinIO, Ceph, R2)
#   PGSSLMODE   TLS to PostgreSQL (libpq; the image sets require)
# The image `deploy/Dockerfile --target mlflow` has it, with mlflow, psycopg 3 and boto3.
#
# Run it as the container command of a Deployment with a Service on port 5000. After an
# MLflow upgrade, migrate the schema once before starting: MLFLOW_DB_UPGRADE=1 deploy/mlflow-server.sh
set -euo pipefail

for var in MLFLOW_DB_HOST MLFLOW_DB_NAME MLFLOW_DB_USER MLFLOW_DB_PASSWORD \
           MLFLOW_ARTIFACTS_DESTINATION MLFLOW_ALLOWED_HOSTS; do
  if [[ -z "${!var:-}" ]]; then
    echo "mlflow-server: set $var (see the top of $0)" >&2
    exit 2
  fi
done

# The URI carries the password, so it is built here from the environment, URL-quoted, and
# handed over in the environment (MLFLOW_BACKEND_STORE_URI), never on a command line that
# `ps` shows. postgresql+psycopg is SQLAlchemy's dialect for psycopg 3.
MLFLOW_BACKEND_STORE_URI="$(python - <<'PY'
import os
from urllib.parse import quote
e = os.environ
print(f"postgresql+psycopg://{quote(e['MLFLOW_DB_USER'], safe='')}:"
      f"{quote(e['MLFLOW_DB_PASSWORD'], safe='')}@{e['MLFLOW_DB_HOST']}:"
      f"{e.get('MLFLOW_DB_PORT', '5432')}/{quote(e['MLFLOW_DB_NAME'], safe='')}")
PY
)"
export MLFLOW_BACKEND_STORE_URI
# MLflow's job runner (a huey consumer beside the server, for GenAI jobs): relgraph starts
# no MLflow jobs, so it stays off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

if [[ "${MLFLOW_DB_UPGRADE:-0}" == "1" ]]; then
  # a one-off start; `mlflow db upgrade` takes the URI only as an argument
  mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
fi

exec mlflow server \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host 0.0.0.0 \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}" \
  --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
