#!/usr/bin/env bash
# The benchmark suite, one command: installs the peers, builds mpu-sweeper (release), starts the
# S3 and Kubernetes test beds, then runs bench/bench.py. Knobs: see bench/README.md.
#
# Everything it installs goes to caches outside the repository: ~/.cache/mpu-sweeper/bench-venv
# (awscli, boto3, matplotlib from PyPI, pinned below), Debian packages (s3cmd, rclone, time), and
# the release build (mpu-sweeper and the fault proxy) in $CARGO_TARGET_DIR (default
# ~/.cache/mpu-sweeper/target).
#
# It never moves the clock of the bed's shared aged gateway (it starts a radosgw of its own for
# that), so it can run beside hack/test.sh; the timings are then those of a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR=${MPU_CACHE_DIR:-$HOME/.cache/mpu-sweeper}
VENV=$CACHE_DIR/bench-venv
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE_DIR/target}
# Never let an SDK probe the instance metadata address; every endpoint is explicit and loopback.
export AWS_EC2_METADATA_DISABLED=true
APISERVER=$CACHE_DIR/kube-apiserver-v1.20.2

LOG_TAG=bench
# shellcheck source=hack/lib.sh
. hack/lib.sh

skipping() { [[ " ${BENCH_SKIP:-} " == *" $1 "* ]]; }

# The peers' versions, pinned: a rerun compares against the same aws-cli and boto3. (s3cmd and
# rclone come from Debian bookworm, whose stable versions do not move: 2.3.0 and 1.60.1; the
# results record both.)
PIP_PINS=(awscli==1.46.3 boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 matplotlib==3.11.2)

install() {
  local missing=()
  command -v s3cmd >/dev/null || missing+=(s3cmd)
  command -v rclone >/dev/null || missing+=(rclone)
  [ -x /usr/bin/time ] || missing+=(time)
  apt_install "${missing[@]}"
  # The stamp holds the pins the venv was made with; other pins make it anew.
  if [ ! -x "$VENV/bin/aws" ] || [ "$(cat "$VENV/pins" 2>/dev/null)" != "${PIP_PINS[*]}" ]; then
    log "installing ${PIP_PINS[*]} into $VENV"
    mkdir -p "$CACHE_DIR"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PINS[@]}"
    echo "${PIP_PINS[*]}" >"$VENV/pins"
  fi
}

build() {
  # cargo is incremental: a no-op when the binaries are up to date with the tree. The fault
  # proxy (examples/fault_proxy.rs) adds round trips and throttling in front of the servers.
  log "building mpu-sweeper and the fault proxy (release) into $CARGO_TARGET_DIR"
  cargo build --release --locked --quiet --bins --example fault_proxy
}

wait_for_apiserver_build() {
  # Another process may be building kube-apiserver right now (kubeenv.sh install); starting a
  # second build of the same tree would only make both slower. Wait for its binary instead.
  if [ ! -x "$APISERVER" ] && pgrep -f "make WHAT=cmd/kube-apiserver|cmd/kube-apiserver" >/dev/null; then
    log "waiting for the kube-apiserver build in progress"
    while [ ! -x "$APISERVER" ] && pgrep -f "cmd/kube-apiserver" >/dev/null; do sleep 10; done
  fi
}

# `testenv.sh up` on a running bed resets the shared aged gateway's clock to +0, which would
# break an integration test that has it in the past right now: a bed that answers is used as is.
s3_bed_answers() {
  local f=$1 url
  [ -f "$f" ] || return 1
  while read -r url; do
    curl -s -o /dev/null --max-time 3 "$url" || return 1
  done < <(sed -n 's/^MPU_TEST_\(CEPH\|SEAWEEDFS\)_ENDPOINT=//p' "$f")
}

install
build
s3_env=${MPU_TESTBED_DIR:-/tmp/mpu-sweeper-testbed}/env
if ! s3_bed_answers "$s3_env"; then
  s3_env=$(hack/testenv.sh up)
fi
kube_env=""
if ! skipping operator; then
  wait_for_apiserver_build
  kube_env=$(hack/kubeenv.sh up)
fi

"$VENV/bin/python" bench/bench.py "$s3_env" "$kube_env"
