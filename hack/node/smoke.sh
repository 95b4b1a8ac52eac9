#!/usr/bin/env bash
# Proves the node bed works (hack/nodeenv.sh smoke, after hack/nodeenv.sh up), in a namespace of
# its own that it deletes at the end:
#   - a busybox pod scheduled and Running on the node, with its ServiceAccount token mounted;
#   - from the pod, the API server through the `kubernetes` service (10.96.0.1, kube-proxy), with
#     that token (the ServiceAccount may list pods in its namespace);
#   - from the pod, the S3 forwards on MPU_TEST_POD_HOST (Ceph RGW, SeaweedFS http and https);
#   - a Deployment whose readiness probe (HTTP, busybox httpd) passes, reached through its Service;
#   - kubectl logs and exec (the apiserver reaching the kubelet);
#   - from the node's namespace, the service IP's TLS certificate verified with the cluster CA.
# Prints what it saw; exits non-zero at the first check that fails.
set -euo pipefail
HACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
env_file=$(mktemp)
"$HACK_DIR/nodeenv.sh" env >"$env_file"
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
rm -f "$env_file"
# shellcheck source=hack/node/network.sh
. "$HACK_DIR/node/network.sh"
KUBECTL=${KUBECTL:-$(command -v kubectl || echo "${MPU_CACHE_DIR:-$HOME/.cache/mpu-sweeper}/tools/bin/kubectl")}
[ -x "$KUBECTL" ] || { echo "smoke: no kubectl (hack/tools.sh up installs one)" >&2; exit 1; }
k() { "$KUBECTL" --kubeconfig "$MPU_TEST_KUBECONFIG" "$@"; }
ns=mpu-node-smoke-$$
say() { printf '\n== %s\n' "$*"; }
fail() { echo "smoke: FAILED: $*" >&2; k -n "$ns" get pods,events -o wide >&2 || true; exit 1; }
trap 'k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT

say "node"
k get node "$MPU_TEST_NODE_NAME" -o wide
k create namespace "$ns" >/dev/null
for _ in $(seq 60); do
  k -n "$ns" get serviceaccount default -o jsonpath='{.secrets[0].name}' 2>/dev/null | grep -q . && break
  sleep 1
done
k -n "$ns" create rolebinding default-view --clusterrole=view --serviceaccount="$ns:default" >/dev/null

say "a busybox pod ($MPU_TEST_NODE_TEST_IMAGE)"
k -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: probe}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: probe
    image: $MPU_TEST_NODE_TEST_IMAGE
    command: [sh, -c, 'echo probe started; exec sleep 3600']
EOF
k -n "$ns" wait pod/probe --for=condition=Ready --timeout=120s >/dev/null || fail "pod probe not Ready"
k -n "$ns" get pod probe -o wide
x() { k -n "$ns" exec probe -- "$@"; }
echo "logs: $(k -n "$ns" logs probe)"
say "its ServiceAccount token"
x ls /var/run/secrets/kubernetes.io/serviceaccount
echo "token: $(x cat /var/run/secrets/kubernetes.io/serviceaccount/token | cut -c1-24)..."
# shellcheck disable=SC2016 # expanded in the pod
say "the API server through the kubernetes service ($(x sh -c 'echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"'))"
# shellcheck disable=SC2016 # expanded in the pod
x sh -c 'wget -q -O- --header "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" \
  "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)/pods"' \
  | grep -o '"name": *"probe"' | head -n1 | grep -q . || fail "the pod cannot list itself through the service"
echo "GET https://10.96.0.1:443/api/v1/namespaces/$ns/pods with the pod's token: lists pod probe"
say "the S3 forwards on MPU_TEST_POD_HOST=$MPU_TEST_POD_HOST"
for url in "$MPU_TEST_POD_S3_CEPH_ENDPOINT" "$MPU_TEST_POD_S3_CEPH_AGED_ENDPOINT" "$MPU_TEST_POD_S3_CEPH_FAULT_ENDPOINT" \
  "$MPU_TEST_POD_S3_SEAWEEDFS_ENDPOINT" ${MPU_TEST_POD_S3_SEAWEEDFS_HTTPS_ENDPOINT:+"$MPU_TEST_POD_S3_SEAWEEDFS_HTTPS_ENDPOINT"}; do
  status=$(x sh -c "timeout 5 wget -S -q -O /dev/null '$url/' 2>&1 | grep -m1 'HTTP/1' || true")
  echo "$url/ -> ${status:-no answer}"
  [ -n "$status" ] || fail "no HTTP answer from $url"
done

say "a Deployment with a readiness probe, and its Service"
k -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: $MPU_TEST_NODE_TEST_IMAGE
        command: [sh, -c, 'mkdir -p /www && hostname >/www/index.html && exec httpd -f -p 8080 -h /www']
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
k -n "$ns" rollout status deployment/web --timeout=120s || fail "deployment web not available"
k -n "$ns" get deployment web
svc=$(k -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')
for _ in $(seq 30); do
  answer=$(x timeout 3 wget -q -O- "http://$svc/" 2>/dev/null || true)
  [ -n "$answer" ] && break
  sleep 1
done
echo "GET http://$svc/ (service web) from pod probe: $answer"
[ -n "$answer" ] || fail "service web did not answer"

say "certificates, verified from the node's network namespace (busybox's wget verifies none)"
nsenter --net="/run/netns/$MPU_TEST_NODE_NETNS" -- curl -sS --cacert "$(dirname "$MPU_TEST_KUBECONFIG")/pki/ca.crt" \
  "https://$KUBERNETES_SERVICE_IP/version" | grep gitVersion || fail "https://$KUBERNETES_SERVICE_IP/version"
if [ -n "${MPU_TEST_POD_S3_SEAWEEDFS_HTTPS_ENDPOINT:-}" ]; then
  ca=${MPU_TESTBED_DIR:-/tmp/mpu-sweeper-testbed}/seaweedfs/tls/ca.crt
  code=$(nsenter --net="/run/netns/$MPU_TEST_NODE_NETNS" -- curl -sS -o /dev/null -w '%{http_code}' --cacert "$ca" \
    "$MPU_TEST_POD_S3_SEAWEEDFS_HTTPS_ENDPOINT/") || fail "$MPU_TEST_POD_S3_SEAWEEDFS_HTTPS_ENDPOINT with the S3 bed's CA"
  echo "$MPU_TEST_POD_S3_SEAWEEDFS_HTTPS_ENDPOINT/ verified with $ca: HTTP $code"
fi
echo
echo "smoke: all checks passed"
