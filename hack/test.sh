#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test against the real S3
# test bed (installed and started here). Tests that need the bed fail, never skip, under this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build output lives outside the clone so that fresh clones on the same machine reuse it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mpu-sweeper/target}
# The tests never need instance metadata; make sure the SDK never tries the link-local address.
export AWS_EC2_METADATA_DISABLED=true

echo "== cargo fmt --check"
cargo fmt --check

echo "== test beds: S3 servers and packaging tools"
s3_env=$(hack/testenv.sh up)
tools_env=$(hack/tools.sh up)
# buildah, skopeo, umoci, runc: the operator's image for tests/image.rs and the node.
hack/image.sh deps
# The first build of the Kubernetes binaries (kube-apiserver, and the node's: kubelet,
# kube-proxy, kube-controller-manager, kube-scheduler, pause) and the node's packages and images
# runs beside the Rust builds below (afterwards it is cached and this returns at once).
kube_log=$(mktemp)
hack/nodeenv.sh install >"$kube_log" 2>&1 &
kube_install=$!
set -a
# shellcheck disable=SC1090
. "$s3_env"
# shellcheck disable=SC1090
. "$tools_env"
set +a
# kubectl 1.35 and helm 4 from hack/tools.sh, the same on every machine.
export PATH=$MPU_TEST_TOOLS_BIN:$PATH
export MPU_TEST_REQUIRE_BED=1

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo build (tests)"
cargo test --locked --no-run

echo "== test bed: kube-apiserver and a node (built once, cached)"
wait "$kube_install" || { cat "$kube_log" >&2; exit 1; }
rm -f "$kube_log"
kube_env=$(hack/kubeenv.sh up)
# The node joins that apiserver's cluster: kube-controller-manager, kube-scheduler, containerd,
# kubelet and kube-proxy in a network namespace of their own, the operator's image loaded when
# hack/image.sh builds one.
node_env=$(hack/nodeenv.sh up)
set -a
# shellcheck disable=SC1090
. "$kube_env"
# shellcheck disable=SC1090
. "$node_env"
set +a

echo "== cargo test"
# The S3 tests wait on the network more than on the CPU: run more of them at once than cores.
cargo test --locked --no-fail-fast -- --test-threads 8
