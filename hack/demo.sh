#!/usr/bin/env bash
# Try mpu-sweeper in one command, on this machine only: a local Ceph RGW and kube-apiserver
# (the test beds), a bucket holding 3-day-old and fresh incomplete uploads, the CRD, a Secret and a
# MultipartCleanup with maxAge 2d, the operator running until the resource is Ready, then
# `kubectl get mpc` with the counts. Everything listens on 127.0.0.1; `hack/demo.sh down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "down" ]; then
  hack/kubeenv.sh down
  hack/testenv.sh down
  exit 0
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mpu-sweeper/target}
export AWS_EC2_METADATA_DISABLED=true
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "starting the local S3 server (Ceph RGW) and Kubernetes API server"
set -a
# shellcheck disable=SC1090
. "$(hack/testenv.sh up)"
# shellcheck disable=SC1090
. "$(hack/tools.sh up)"
# shellcheck disable=SC1090
. "$(hack/kubeenv.sh up)"
set +a
export PATH=$MPU_TEST_TOOLS_BIN:$PATH
export KUBECONFIG=$MPU_TEST_KUBECONFIG

say "building mpu-sweeper"
cargo build --locked --quiet --bin mpu-sweeper --example seed_uploads
bin=$CARGO_TARGET_DIR/debug/mpu-sweeper
seed=$CARGO_TARGET_DIR/debug/examples/seed_uploads

say "creating a bucket with 20 uploads started 3 days ago and 5 started now"
export AWS_ACCESS_KEY_ID=$MPU_TEST_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$MPU_TEST_SECRET_ACCESS_KEY
bucket=demo-$(date +%s)
# The second gateway's clock is moved back three days; the client signs in the same past.
trap 'echo "+0" >"$MPU_TEST_CEPH_AGED_FAKETIME_FILE"' EXIT
echo "-3d" >"$MPU_TEST_CEPH_AGED_FAKETIME_FILE"
faketime -m --exclude-monotonic -f "-3d" \
  "$seed" --endpoint "$MPU_TEST_CEPH_AGED_ENDPOINT" --bucket "$bucket" --count 20 --prefix checkpoints/old-
echo "+0" >"$MPU_TEST_CEPH_AGED_FAKETIME_FILE"
"$seed" --endpoint "$MPU_TEST_CEPH_ENDPOINT" --bucket "$bucket" --count 5 --prefix checkpoints/new-

say "installing the CRD and creating a Secret and a MultipartCleanup in namespace mpu-demo"
kubectl apply -f crds/multipartcleanup.yaml >/dev/null
kubectl wait --for=condition=Established crd/multipartcleanups.mpusweeper.io --timeout=60s >/dev/null
kubectl create namespace mpu-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n mpu-demo create secret generic s3-credentials \
  --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n mpu-demo delete mpc demo --ignore-not-found >/dev/null
kubectl apply -f - <<EOF
apiVersion: mpusweeper.io/v1alpha1
kind: MultipartCleanup
metadata:
  name: demo
  namespace: mpu-demo
spec:
  bucket: $bucket
  endpoint: $MPU_TEST_CEPH_ENDPOINT
  addressingStyle: path
  credentialsSecretRef:
    name: s3-credentials
  maxAge: 2d
  schedule: "@daily"
EOF

say "running the operator until the resource is Ready"
log=$(mktemp /tmp/mpu-sweeper-demo.XXXXXX.log)
# The operator does not need the S3 keys in its environment: it reads them from the Secret.
env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY \
  "$bin" controller --namespace mpu-demo --http-address 127.0.0.1:0 >"$log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null; echo "+0" >"$MPU_TEST_CEPH_AGED_FAKETIME_FILE"' EXIT
if ! kubectl -n mpu-demo wait --for=condition=Ready mpc/demo --timeout=90s >/dev/null; then
  tail -n 20 "$log" >&2
  kubectl -n mpu-demo get mpc demo -o yaml >&2
  exit 1
fi

say "kubectl get mpc"
kubectl -n mpu-demo get mpc
say "status.lastRun"
kubectl -n mpu-demo get mpc demo -o jsonpath='{.status.lastRun}{"\n"}'
say "events"
kubectl -n mpu-demo get events --field-selector involvedObject.name=demo
say "the 5 fresh uploads are still there; a dry run of the command shows nothing left to abort"
"$bin" sweep --bucket "$bucket" --max-age 2d --endpoint "$MPU_TEST_CEPH_ENDPOINT" \
  --addressing-style path --dry-run --quiet
printf '\nOperator log: %s. The beds keep running; stop them with: hack/demo.sh down\n' "$log" >&2
