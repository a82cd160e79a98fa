#!/usr/bin/env bash
# The codexlm container with podman, no registry and no network at build time
# (docs/serving.md, "A container"). Run from anywhere; as root (rootful podman).
#
#   tools/container.sh build                 # base image (debootstrap) + wheels/ + podman build --network=none
#   tools/container.sh repro                 # make repro without network; dvc.lock, reports/, models/ to container-out/
#   tools/container.sh serve MODEL_DIR [ARGS...]   # codexlm serve MODEL_DIR on 127.0.0.1:${PORT:-8000}
#
# Needs: apt-get install podman debootstrap runc (Debian 12: podman 4.3.1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-localhost/codexlm-base:bookworm}
IMAGE=${IMAGE:-localhost/codexlm:latest}
SUITE=${SUITE:-bookworm}
PORT=${PORT:-8000}
# the base image's packages: python3 (3.11) and venv for the project's environment, g++ and
# python3-dev for torch.compile's C++ kernels (train.compile: true), make for `make repro`,
# git for DVC, bubblewrap for the code-eval sandbox's `full` level (docs/codeeval.md)
PACKAGES=python3,python3-venv,python3-dev,g++,make,git,bubblewrap,ca-certificates
# Flags for every container, the build's included (docs/serving.md says why each one):
# runc, as crun refuses a hybrid cgroup v1/v2 host; the open-files and process limits set to
# values this shell may set (podman's defaults, 1048576 and up, are refused without
# CAP_SYS_RESOURCE; this machine's runtime took at most 32768 processes)
NOFILE=$(ulimit -Hn)
NPROC=$(ulimit -Hu)
if [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ]; then NPROC=32768; fi
if [ "$NOFILE" = unlimited ]; then NOFILE=1048576; fi
COMMON=(${COMMON:---runtime ${RUNTIME:-runc} --ulimit nofile=$NOFILE:$NOFILE --ulimit nproc=$NPROC:$NPROC})
# and for `make repro`: the code-eval stage's sandbox (bubblewrap) makes user, PID and network
# namespaces and mounts its own /proc, which podman's seccomp profile and masked /proc paths
# forbid; --privileged also gives each sample its memory cgroup. The narrower
# RUN_FLAGS="--security-opt seccomp=unconfined --security-opt systempaths=unconfined" gives
# the `full` level without that cgroup (memory then bounded per process)
RUN_FLAGS=(${RUN_FLAGS:---privileged})

mirror() {  # this machine's Debian mirror, from its apt sources
  local m
  m=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?$' | head -n1 || true)
  echo "${MIRROR:-${m:-http://deb.debian.org/debian}}"
}

base() {  # Debian $SUITE, minbase + $PACKAGES, imported as $BASE
  if podman image exists "$BASE"; then echo "base image $BASE: present"; return; fi
  local dir
  dir=$(mktemp -d /var/tmp/codexlm-rootfs.XXXXXX)
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$dir" "$(mirror)"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar --numeric-owner -C "$dir" -c . | podman import - "$BASE"
  rm -rf "$dir"
}

wheels() {  # every pin of requirements.lock, hash-checked, into the build context
  local py=${PYTHON:-python3}
  "$py" -m pip download -q --require-hashes --no-deps -r "$ROOT/requirements.lock" -d "$ROOT/wheels"
  echo "wheels/: $(ls "$ROOT/wheels" | wc -l) files, $(du -sh "$ROOT/wheels" | cut -f1)"
}

build() {
  base
  wheels
  podman build --network=none "${COMMON[@]}" -t "$IMAGE" "$ROOT"
  podman image ls "$IMAGE"
}

repro() {  # the whole pipeline from scratch, no network; dvc.lock, reports/, models/export out
  local out=$ROOT/container-out
  podman rm -f codexlm-repro >/dev/null 2>&1 || true
  podman run --name codexlm-repro --network=none "${COMMON[@]}" "${RUN_FLAGS[@]}" "$IMAGE" \
    sh -c 'make repro && git status --short && git diff --stat'
  rm -rf "$out" && mkdir -p "$out/models"
  podman cp codexlm-repro:/codexlm/dvc.lock "$out/dvc.lock"
  podman cp codexlm-repro:/codexlm/reports "$out/reports"
  podman cp codexlm-repro:/codexlm/models/trained "$out/models/trained"
  podman cp codexlm-repro:/codexlm/models/export "$out/models/export"
  podman rm codexlm-repro >/dev/null
  echo "copied to $out: dvc.lock, reports/, models/trained/, models/export/"
}

serve() {  # MODEL_DIR read-only at /model; the port published on the host's loopback only
  local model
  model=$(cd "${1:?usage: tools/container.sh serve MODEL_DIR [codexlm serve args]}" && pwd)
  shift
  exec podman run --rm "${COMMON[@]}" -p "127.0.0.1:$PORT:8000" -v "$model:/model:ro" \
    "$IMAGE" codexlm serve /model --host 0.0.0.0 --port 8000 --name "$(basename "$model")" "$@"
}

case "${1:-}" in
  build | repro) "$1" ;;
  serve) shift; serve "$@" ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
