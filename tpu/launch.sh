#!/usr/bin/env bash
# Runs the same command on every worker of a Cloud TPU VM pod slice.
#
#   tpu/launch.sh install                      # once: clone/update and install on all workers
#   tpu/launch.sh train --workdir=gs://B/run --config=configs/cfg_flip_large.py \
#       --config.laion_path=gs://B/laion400m --config.batch_size=32768
#
# Needs: TPU_NAME, ZONE (and optionally PROJECT, REPO_URL, REPO_DIR) in the environment.
# Each worker runs one process; main.py calls jax.distributed.initialize() itself, every host
# reads its own slice of the shards, only process 0 writes logs, and all hosts write the
# checkpoints together, so workdir must be a path every worker reaches (a gs:// bucket).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_URL=${REPO_URL:-$(git config --get remote.origin.url || true)}
REPO_DIR=${REPO_DIR:-mlip}
project=()
[[ -n "${PROJECT:-}" ]] && project=(--project "$PROJECT")

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project[@]}" --worker=all \
      --command "$1"
}

case "${1:-}" in
  install)
    : "${REPO_URL:?set REPO_URL: this checkout has no git remote to clone on the workers}"
    on_all_workers "set -e; [ -d $REPO_DIR ] || git clone $REPO_URL $REPO_DIR; cd $REPO_DIR;
      git pull --ff-only; python3 -m venv .venv; .venv/bin/pip install -q -r requirements.txt;
      .venv/bin/pip install -q -U 'jax[tpu]>=0.10.2,<0.11' \
        -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  train)
    shift
    on_all_workers "cd $REPO_DIR && .venv/bin/python main.py --distributed $(printf '%q ' "$@")"
    ;;
  *)
    echo "usage: $0 install | train MAIN_PY_FLAGS..." >&2
    exit 2
    ;;
esac
