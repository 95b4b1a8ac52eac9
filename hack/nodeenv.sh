#!/usr/bin/env bash
# A real node in the test cluster: the operator runs as a pod here, the way it is installed for real.
#
#   hack/nodeenv.sh install                apt packages, the binaries (hack/kubeenv.sh install) and
#                                          the node's images (pause, busybox), each built once and cached
#   hack/nodeenv.sh up                     install, then bring up whatever is not running: the API
#                                          server (hack/kubeenv.sh up), kube-controller-manager,
#                                          kube-scheduler, containerd, kubelet, kube-proxy, the
#                                          network; load the operator's image when hack/image.sh
#                                          exists; wait for the node to be Ready; prints the env file
#   hack/nodeenv.sh env                    print the environment the tests read
#   hack/nodeenv.sh down                   stop all of it and remove its network namespaces,
#                                          interfaces, routes and state
#   hack/nodeenv.sh load-image ARCHIVE REF import an OCI or docker archive into the node as REF
#   hack/nodeenv.sh smoke                  prove it works: hack/node/smoke.sh (pods, service, probes)
#
# One cluster: the node joins hack/kubeenv.sh's kube-apiserver (127.0.0.1:16443), so the admin
# kubeconfig of the operator tests is this cluster's too. Kubernetes v1.20.2 from Debian's source
# package (hack/kubeenv.sh builds every binary in one go), containerd 1.6 and runc from Debian with
# the cgroupfs driver, Debian's CNI plugins (bridge + host-local), kube-proxy in iptables mode.
#
# Network (hack/node/network.sh): containerd, the kubelet, kube-proxy and every pod live in the
# network namespace $NODE_NETNS, joined to this machine by one veth pair and with no default
# route: pods reach this machine at MPU_TEST_POD_HOST (10.250.0.1) and each other, nothing else,
# and every iptables rule kube-proxy and the CNI plugins write stays in that namespace. On
# MPU_TEST_POD_HOST, forwarders (socat) pass pods' connections to 127.0.0.1: the apiserver (the
# `kubernetes` service's endpoint), Ceph RGW :17480-17482 and SeaweedFS :18333 as plain TCP (the
# Host header reaches the server unchanged, so SigV4 holds), SeaweedFS HTTPS :18334 re-encrypted
# with a certificate for MPU_TEST_POD_HOST from the S3 bed's own CA (MPU_TEST_SEAWEEDFS_CA_BUNDLE).
# Nothing listens on 0.0.0.0 or on this machine's own interfaces.
#
# State lives in $MPU_NODEBED_DIR (default /tmp/mpu-sweeper-nodebed), images in
# ~/.cache/mpu-sweeper/node-images. No image can be pulled: pause is built from the Kubernetes
# source, busybox (the smoke-test image) comes from Debian's busybox-static, the operator's image
# from hack/image.sh. While the node is up the kubelet keeps its usual kernel settings
# (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1); `down` restores the old values.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "$0")" && pwd)
CACHE_DIR=${MPU_CACHE_DIR:-$HOME/.cache/mpu-sweeper}
BED_DIR=${MPU_NODEBED_DIR:-/tmp/mpu-sweeper-nodebed}
KUBE_BED_DIR=${MPU_KUBEBED_DIR:-/tmp/mpu-sweeper-kubebed}
S3_BED_DIR=${MPU_TESTBED_DIR:-/tmp/mpu-sweeper-testbed}
ENV_FILE=$BED_DIR/env
IMAGES_DIR=$CACHE_DIR/node-images
K8S_VERSION=1.20.2
API_PORT=16443
# Ports of the S3 bed (hack/testenv.sh) forwarded to pods as plain TCP, and the HTTPS one.
S3_PORTS=(17480 17481 17482 18333)
S3_TLS_PORT=18334

PAUSE_IMAGE=localhost/mpu-sweeper/pause:3.4
BUSYBOX_IMAGE=localhost/mpu-sweeper/busybox:bookworm
OPERATOR_IMAGE=localhost/mpu-sweeper/mpu-sweeper:test

SOCKET=$BED_DIR/containerd/containerd.sock
CTR_NS=k8s.io
RUNC=/usr/sbin/runc
CNI_BIN_DIR=/usr/lib/cni
NETNS_PATH=/run/netns

LOG_TAG=nodeenv
# shellcheck source=hack/lib.sh
. "$HACK_DIR/lib.sh"
# shellcheck source=hack/node/network.sh
. "$HACK_DIR/node/network.sh"

k8s_bin() { echo "$CACHE_DIR/$1-v$K8S_VERSION"; }
in_node() { nsenter --net="$NETNS_PATH/$NODE_NETNS" -- "$@"; }
ctr_node() { ctr --address "$SOCKET" --namespace "$CTR_NS" "$@"; }

# ---------------------------------------------------------------------------------------------
# install

install_apt() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  [ -x "$RUNC" ] || missing+=(runc)
  [ -x "$CNI_BIN_DIR/bridge" ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v socat >/dev/null || missing+=(socat)
  command -v umoci >/dev/null || missing+=(umoci)
  dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v python3 >/dev/null || missing+=(python3)
  apt_install "${missing[@]}"
}

# An OCI image layout, tagged TAG, with a single layer holding ROOTFS; packed to ARCHIVE.
build_oci_archive() { # archive tag rootfs entrypoint|"" [cmd]
  local archive=$1 tag=$2 rootfs=$3 entrypoint=$4 cmd=${5:-}
  local work
  work=$(mktemp -d)
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$tag"
  umoci insert --image "$work/layout:$tag" "$rootfs" /
  local config=(--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  [ -n "$entrypoint" ] && config+=(--config.entrypoint "$entrypoint")
  [ -n "$cmd" ] && config+=(--config.cmd "$cmd")
  umoci config --image "$work/layout:$tag" "${config[@]}"
  umoci gc --layout "$work/layout"
  tar -C "$work/layout" -cf "$archive.$$" .
  mv "$archive.$$" "$archive"
  rm -rf "$work"
}

build_images() {
  mkdir -p "$IMAGES_DIR"
  local pause
  pause=$(k8s_bin pause)
  [ -x "$pause" ] || die "no $pause (hack/kubeenv.sh install builds it)"
  if [ ! -f "$IMAGES_DIR/pause.tar" ] || [ "$pause" -nt "$IMAGES_DIR/pause.tar" ]; then
    log "building the pause image ($PAUSE_IMAGE) from $pause"
    local root
    root=$(mktemp -d)
    install -m 0755 "$pause" "$root/pause"
    build_oci_archive "$IMAGES_DIR/pause.tar" "${PAUSE_IMAGE##*:}" "$root" /pause
    rm -rf "$root"
  fi
  if [ ! -f "$IMAGES_DIR/busybox.tar" ] || [ /bin/busybox -nt "$IMAGES_DIR/busybox.tar" ]; then
    log "building the smoke-test image ($BUSYBOX_IMAGE) from Debian's busybox-static"
    local root applet
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,root}
    chmod 1777 "$root/tmp"
    install -m 0755 /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list-full); do
      [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    build_oci_archive "$IMAGES_DIR/busybox.tar" "${BUSYBOX_IMAGE##*:}" "$root" "" sh
    rm -rf "$root"
  fi
}

cmd_install() {
  install_apt
  "$HACK_DIR/kubeenv.sh" install 8>&-
  local b
  for b in kube-controller-manager kube-scheduler kubelet kube-proxy pause; do
    [ -x "$(k8s_bin "$b")" ] || die "hack/kubeenv.sh install left no $(k8s_bin "$b")"
  done
  build_images
}

# ---------------------------------------------------------------------------------------------
# processes: each has BED_DIR/run/NAME.pid and BED_DIR/log/NAME.log

pid_of() { [ -f "$BED_DIR/run/$1.pid" ] && cat "$BED_DIR/run/$1.pid"; }

running() { # name
  local pid
  pid=$(pid_of "$1") || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Not another process that got the same pid: ours were started with the bed's directory or
  # address somewhere on their command line.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "$BED_DIR|$NODE_HOST_IP|$KUBE_BED_DIR"
}

# start NAME node|host COMMAND...: starts it in the background unless it is running.
start() {
  local name=$1 where=$2
  shift 2
  running "$name" && return 0
  log "starting $name"
  # Its own descriptors only: not the lock this script holds (fd 8), which it would keep.
  if [ "$where" = node ]; then
    nohup nsenter --net="$NETNS_PATH/$NODE_NETNS" -- "$@" >>"$BED_DIR/log/$name.log" 2>&1 </dev/null 8>&- &
  else
    nohup "$@" >>"$BED_DIR/log/$name.log" 2>&1 </dev/null 8>&- &
  fi
  echo $! >"$BED_DIR/run/$name.pid"
}

# stop NAME...: SIGTERM to each that is running, SIGKILL to those still there after 10 s.
stop() {
  local name pid pids=()
  for name in "$@"; do
    if running "$name"; then
      pid=$(pid_of "$name")
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$BED_DIR/run/$name.pid"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # what seconds command... (command succeeds = ready)
  local what=$1 seconds=$2 i
  shift 2
  for ((i = 0; i < seconds * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what not ready within $seconds s (logs: $BED_DIR/log)"
}

# ---------------------------------------------------------------------------------------------
# configuration

render() { # template > output, replacing @NAME@ by $NAME
  local template=$1 out=$2 text name
  text=$(cat "$template")
  for name in BED_DIR SOCKET PAUSE_IMAGE RUNC CNI_BIN_DIR NODE_BRIDGE POD_CIDR POD_GATEWAY NODE_IP \
    NODE_NAME CA_FILE; do
    text=${text//@$name@/${!name}}
  done
  printf '%s\n' "$text" >"$out"
}

CA_FILE=$KUBE_BED_DIR/pki/ca.crt
CA_KEY=$KUBE_BED_DIR/pki/ca.key

sign() { # name subject ext-lines
  local pki=$BED_DIR/pki
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  printf '%b\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$CA_FILE" -CAkey "$CA_KEY" -CAcreateserial \
    -CAserial "$pki/ca.srl" -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}

kubeconfig() { # name server cert
  cat >"$BED_DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mpu-sweeper-test
  cluster:
    server: $2
    certificate-authority: $CA_FILE
users:
- name: $1
  user:
    client-certificate: $BED_DIR/pki/$3.crt
    client-key: $BED_DIR/pki/$3.key
contexts:
- name: mpu-sweeper-test
  context: {cluster: mpu-sweeper-test, user: $1}
current-context: mpu-sweeper-test
EOF
}

# Client certificates of the node's components, from the kube bed's CA (made anew if that CA
# changed), and the SeaweedFS HTTPS forwarder's certificate from the S3 bed's CA.
make_pki() {
  local pki=$BED_DIR/pki
  mkdir -p "$pki"
  if ! cmp -s "$CA_FILE" "$pki/ca.crt"; then
    rm -f "$pki"/*.crt "$pki"/*.key
    local client='extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE'
    sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    sign kubelet-serving "/CN=$NODE_NAME" \
      "extendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    sign kube-proxy "/CN=system:kube-proxy" "$client"
    sign kube-controller-manager "/CN=system:kube-controller-manager" "$client"
    sign kube-scheduler "/CN=system:kube-scheduler" "$client"
    cp "$CA_FILE" "$pki/ca.crt"
  fi
  local s3ca=$S3_BED_DIR/seaweedfs/tls
  if [ -f "$s3ca/ca.key" ] && ! openssl verify -CAfile "$s3ca/ca.crt" "$pki/s3-pod.crt" >/dev/null 2>&1; then
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE_HOST_IP" -keyout "$pki/s3-pod.key" \
      -out "$pki/s3-pod.csr" 2>/dev/null
    printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\n' "$NODE_HOST_IP" >"$pki/s3-pod.ext"
    openssl x509 -req -in "$pki/s3-pod.csr" -CA "$s3ca/ca.crt" -CAkey "$s3ca/ca.key" -CAcreateserial \
      -CAserial "$pki/s3ca.srl" -days 3650 -extfile "$pki/s3-pod.ext" -out "$pki/s3-pod.crt" 2>/dev/null
    rm -f "$pki/s3-pod.csr" "$pki/s3-pod.ext"
    stop "forward-$S3_TLS_PORT"
  fi
  kubeconfig kubelet "https://$NODE_HOST_IP:$API_PORT" kubelet
  kubeconfig kube-proxy "https://$NODE_HOST_IP:$API_PORT" kube-proxy
  kubeconfig kube-controller-manager "https://127.0.0.1:$API_PORT" kube-controller-manager
  kubeconfig kube-scheduler "https://127.0.0.1:$API_PORT" kube-scheduler
}

write_configs() {
  mkdir -p "$BED_DIR"/{containerd/certs.d,cni/net.d,cni/ipam,kubelet,log,run}
  render "$HACK_DIR/node/containerd.toml" "$BED_DIR/containerd/config.toml"
  render "$HACK_DIR/node/cni.conflist" "$BED_DIR/cni/net.d/10-mpu-sweeper.conflist"
  render "$HACK_DIR/node/kubelet.yaml" "$BED_DIR/kubelet.yaml"
  render "$HACK_DIR/node/kube-proxy.yaml" "$BED_DIR/kube-proxy.yaml"
  # Pods get no DNS (nothing here serves it): a resolver on their own loopback fails at once,
  # and no query leaves for the machine's resolver.
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$BED_DIR/resolv.conf"
}

# ---------------------------------------------------------------------------------------------
# network

setup_network() {
  [ -e "$NETNS_PATH/$NODE_NETNS" ] || ip netns add "$NODE_NETNS"
  if ! ip link show "$NODE_HOST_IF" >/dev/null 2>&1; then
    ip link add "$NODE_HOST_IF" type veth peer name "$NODE_IF" netns "$NODE_NETNS"
  fi
  ip addr replace "$NODE_HOST_IP/$NODE_LINK_PREFIX" dev "$NODE_HOST_IF"
  ip link set "$NODE_HOST_IF" up
  in_node ip link set lo up
  in_node ip addr replace "$NODE_IP/$NODE_LINK_PREFIX" dev "$NODE_IF"
  in_node ip link set "$NODE_IF" up
  # The pods' bridge (the CNI bridge plugin takes it as it finds it and adds its gateway
  # address) also carries a route for the service range: the node's own processes
  # (hostNetwork pods, curl) can open connections to services and kube-proxy's DNAT sends them
  # on; a packet for no service waits for an ARP answer that never comes, and dies there.
  in_node ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || in_node ip link add "$NODE_BRIDGE" type bridge
  in_node ip link set "$NODE_BRIDGE" up
  in_node ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE"
  # Pods are reached from this machine through the node (replies to the forwarders, the
  # apiserver's connections to pods' webhooks); nothing else is routed anywhere.
  ip route replace "$POD_CIDR" via "$NODE_IP" dev "$NODE_HOST_IF"
  # Inside the node only: pod -> service -> pod crosses the bridge twice (iptables must see it)
  # and is forwarded; these sysctls are per network namespace.
  in_node sysctl -qw net.ipv4.ip_forward=1
  in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1
  if in_node ip route show default | grep -q .; then
    die "the node's network namespace has a default route: refusing to run pods that could leave the machine"
  fi
}

# The sysctls the kubelet sets at start (its kernel defaults): saved once, restored by `down`.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
save_sysctls() {
  [ -f "$BED_DIR/sysctl.saved" ] && return 0
  local s
  for s in "${KUBELET_SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$BED_DIR/sysctl.saved"
}
restore_sysctls() {
  [ -f "$BED_DIR/sysctl.saved" ] || return 0
  local line
  while read -r line; do sysctl -qw "$line" || true; done <"$BED_DIR/sysctl.saved"
  rm -f "$BED_DIR/sysctl.saved"
}

# ---------------------------------------------------------------------------------------------
# components

start_forwarders() {
  start "forward-$API_PORT" host socat "TCP-LISTEN:$API_PORT,bind=$NODE_HOST_IP,reuseaddr,fork,backlog=128" \
    "TCP:127.0.0.1:$API_PORT"
  local port
  for port in "${S3_PORTS[@]}"; do
    start "forward-$port" host socat "TCP-LISTEN:$port,bind=$NODE_HOST_IP,reuseaddr,fork,backlog=128" "TCP:127.0.0.1:$port"
  done
  if [ -f "$BED_DIR/pki/s3-pod.crt" ]; then
    # SECLEVEL=0 lets busybox's TLS client (the smoke-test image) in with the old signature
    # algorithm it offers; a client that offers better (rustls, curl) gets better.
    start "forward-$S3_TLS_PORT" host socat \
      "OPENSSL-LISTEN:$S3_TLS_PORT,bind=$NODE_HOST_IP,reuseaddr,fork,backlog=128,cert=$BED_DIR/pki/s3-pod.crt,key=$BED_DIR/pki/s3-pod.key,verify=0,cipher=DEFAULT:@SECLEVEL=0" \
      "OPENSSL:127.0.0.1:$S3_TLS_PORT,cafile=$S3_BED_DIR/seaweedfs/tls/ca.crt,verify=1"
  else
    log "no S3 bed CA yet ($S3_BED_DIR/seaweedfs/tls): SeaweedFS HTTPS is not forwarded to pods"
  fi
}

start_control_plane() {
  local kcm=$BED_DIR/kube-controller-manager.kubeconfig sched=$BED_DIR/kube-scheduler.kubeconfig
  mkdir -p "$BED_DIR/kube-controller-manager" "$BED_DIR/kube-scheduler"
  # Leader election off: an apiserver restart (a test does that) must not make them exit.
  start kube-controller-manager host "$(k8s_bin kube-controller-manager)" \
    --kubeconfig="$kcm" --authentication-kubeconfig="$kcm" --authorization-kubeconfig="$kcm" \
    --bind-address=127.0.0.1 --secure-port=10257 --port=0 --cert-dir="$BED_DIR/kube-controller-manager" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$KUBE_BED_DIR/pki/sa.key" --root-ca-file="$CA_FILE" \
    --cluster-signing-cert-file="$CA_FILE" --cluster-signing-key-file="$CA_KEY" \
    --allocate-node-cidrs=false --profiling=false --v=1
  start kube-scheduler host "$(k8s_bin kube-scheduler)" \
    --kubeconfig="$sched" --authentication-kubeconfig="$sched" --authorization-kubeconfig="$sched" \
    --bind-address=127.0.0.1 --secure-port=10259 --port=0 --cert-dir="$BED_DIR/kube-scheduler" \
    --leader-elect=false --profiling=false --v=1
}

start_containerd() {
  start containerd node containerd --config "$BED_DIR/containerd/config.toml"
  wait_for containerd 30 ctr_node version
}

# The name containerd's CRI plugin would give REF (docker.io/library/ for a bare name, :latest
# for no tag). An image the CRI cannot find under the name it normalizes to cannot run.
normalize_ref() {
  local ref=$1 first=""
  [[ "$ref" == */* ]] && first=${ref%%/*}
  if [ -z "$first" ]; then
    ref=docker.io/library/$ref
  elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
    ref=docker.io/$ref
  fi
  [[ "${ref##*/}" == *[:@]* ]] || ref=$ref:latest
  echo "$ref"
}

# load_image ARCHIVE REF: imports an OCI layout or docker archive into the node's containerd
# (namespace k8s.io, unpacked for the CRI) and names it REF; skipped when that same archive is
# already there under REF.
#
# Every name containerd holds must be a normalized reference: the CRI plugin finds an image by
# the normalized form of each of its names, and one it cannot find ("import-DATE:TAG", ctr's
# default for an OCI tag without a repository) breaks every name of that image. So: a docker
# archive keeps its RepoTags (ctr normalizes them); an OCI layout's tags are put under REF's
# repository (--base-name, which also drops names outside it); REF, when not among the
# names, tags the first image imported, or else names the archive's index.
load_image() {
  local archive=$1 ref
  ref=$(normalize_ref "$2")
  [ -f "$archive" ] || die "no image archive $archive"
  local sum stamp
  sum=$(sha256sum "$archive" | cut -d' ' -f1)
  stamp=$BED_DIR/images/$(printf '%s' "$ref" | tr -c 'A-Za-z0-9._-' '_')
  if [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ] && ctr_node images ls -q "name==$ref" | grep -qxF "$ref"; then
    return 0
  fi
  log "importing $archive as $ref"
  mkdir -p "$BED_DIR/images"
  local log=$BED_DIR/log/import.log naming=() names
  tar -tf "$archive" manifest.json >/dev/null 2>&1 || naming=(--base-name "${ref%:*}")
  ctr_node images import "${naming[@]}" "$archive" >"$log" 2>&1 \
    || { cat "$log" >&2; die "importing $archive failed"; }
  names=$(sed -n 's/^unpacking \([^ ]*\) (.*/\1/p' "$log")
  if ! grep -qxF "$ref" <<<"$names"; then
    if [ -n "$names" ]; then
      ctr_node images tag --force "$(head -n 1 <<<"$names")" "$ref" >/dev/null
    else
      ctr_node images import --base-name "${ref%:*}" --index-name "$ref" "$archive" >"$log" 2>&1 \
        || { cat "$log" >&2; die "importing $archive failed"; }
    fi
  fi
  ctr_node images ls -q "name==$ref" | grep -qxF "$ref" || die "$archive imported, but no image $ref"
  echo "$sum" >"$stamp"
}

start_node() {
  local kubelet=$BED_DIR/kubelet.kubeconfig
  start kubelet node "$(k8s_bin kubelet)" \
    --config="$BED_DIR/kubelet.yaml" --kubeconfig="$kubelet" \
    --container-runtime=remote --container-runtime-endpoint="unix://$SOCKET" \
    --runtime-request-timeout=5m \
    --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" \
    --root-dir="$BED_DIR/kubelet" --cert-dir="$BED_DIR/pki" \
    --pod-infra-container-image="$PAUSE_IMAGE" --v=1
  start kube-proxy node "$(k8s_bin kube-proxy)" --config="$BED_DIR/kube-proxy.yaml" --v=1
}

# The admin's view, without kubectl (the tools bed may not be up): GET a path as JSON.
api_get() {
  curl -sf --max-time 5 --cacert "$CA_FILE" -H "Authorization: Bearer $(cat "$KUBE_BED_DIR/admin.token")" \
    "https://127.0.0.1:$API_PORT$1"
}

node_ready() {
  api_get "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
node = json.load(sys.stdin)
ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
sys.exit(0 if ready and ready[0]["status"] == "True" else 1)'
}

# Pods in a fresh namespace need its `default` ServiceAccount, its token Secret and the root CA
# ConfigMap: kube-controller-manager makes them; wait for them in `default`.
default_account_ready() {
  api_get /api/v1/namespaces/default/serviceaccounts/default | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin).get("secrets") else 1)' \
    && api_get /api/v1/namespaces/default/configmaps/kube-root-ca.crt
}

# The operator's image: hack/image.sh builds it around the test build's binary and prints
# `archive=PATH` and `ref=REF`; it is loaded as REF (MPU_NODE_OPERATOR_IMAGE overrides it, else
# localhost/mpu-sweeper/mpu-sweeper:test), which becomes MPU_TEST_IMAGE.
load_operator_image() {
  LOADED_OPERATOR_IMAGE=""
  local out archive ref
  log "building the operator's image (hack/image.sh build)"
  out=$(bash "$HACK_DIR/image.sh" build 8>&-) || die "hack/image.sh build failed"
  archive=$(printf '%s\n' "$out" | sed -n 's/^archive=//p' | head -n 1)
  [ -f "$archive" ] || die "hack/image.sh build printed archive='$archive', which is not a file"
  ref=${MPU_NODE_OPERATOR_IMAGE:-$(printf '%s\n' "$out" | sed -n 's/^ref=//p' | head -n 1)}
  load_image "$archive" "${ref:-$OPERATOR_IMAGE}"
  LOADED_OPERATOR_IMAGE=$(normalize_ref "${ref:-$OPERATOR_IMAGE}")
}

cmd_env() {
  local image=${LOADED_OPERATOR_IMAGE-}
  if [ -z "${LOADED_OPERATOR_IMAGE+x}" ] && [ -f "$ENV_FILE" ]; then
    image=$(sed -n 's/^MPU_TEST_IMAGE=//p' "$ENV_FILE")
  fi
  local tls=""
  [ -f "$BED_DIR/pki/s3-pod.crt" ] && tls="https://$NODE_HOST_IP:$S3_TLS_PORT"
  cat <<EOF
MPU_TEST_KUBECONFIG=$KUBE_BED_DIR/kubeconfig
MPU_TEST_NODE_NAME=$NODE_NAME
MPU_TEST_NODE_IP=$NODE_IP
MPU_TEST_NODE_NETNS=$NODE_NETNS
MPU_TEST_IMAGE=$image
MPU_TEST_NODE_TEST_IMAGE=$BUSYBOX_IMAGE
MPU_TEST_NODE_PAUSE_IMAGE=$PAUSE_IMAGE
MPU_TEST_POD_HOST=$NODE_HOST_IP
MPU_TEST_POD_CIDR=$POD_CIDR
MPU_TEST_SERVICE_CIDR=$SERVICE_CIDR
MPU_TEST_KUBERNETES_SERVICE_IP=$KUBERNETES_SERVICE_IP
MPU_TEST_POD_S3_CEPH_ENDPOINT=http://$NODE_HOST_IP:17480
MPU_TEST_POD_S3_CEPH_AGED_ENDPOINT=http://$NODE_HOST_IP:17481
MPU_TEST_POD_S3_CEPH_FAULT_ENDPOINT=http://$NODE_HOST_IP:17482
MPU_TEST_POD_S3_SEAWEEDFS_ENDPOINT=http://$NODE_HOST_IP:18333
MPU_TEST_POD_S3_SEAWEEDFS_HTTPS_ENDPOINT=$tls
MPU_TEST_NODE_CONTAINERD_ADDRESS=$SOCKET
MPU_TEST_NODE_CONTAINERD_NAMESPACE=$CTR_NS
MPU_TEST_NODE_CTR=$(command -v ctr || echo /usr/bin/ctr)
MPU_NODEENV_SCRIPT=$HACK_DIR/nodeenv.sh
EOF
}

cmd_up() {
  cmd_install
  # (without this script's lock, fd 8: an apiserver started now would hold it for ever)
  "$HACK_DIR/kubeenv.sh" up >/dev/null 8>&-
  # A bed left by an earlier life (its processes ended with the session that started them; its
  # network namespace, mounts and containers maybe still there) is cleared first.
  if [ -d "$BED_DIR/run" ] && ! running containerd; then
    log "clearing what is left of an earlier node bed"
    cmd_down
  fi
  mkdir -p "$BED_DIR"/{run,log}
  # The kubelet writes container logs to /var/log/pods (fixed in v1.20): removed by `down` when
  # this bed made it.
  [ -e /var/log/pods ] || [ -f "$BED_DIR/made-var-log-pods" ] || touch "$BED_DIR/made-var-log-pods"
  make_pki
  write_configs
  setup_network
  save_sysctls
  start_forwarders
  start_control_plane
  start_containerd
  load_image "$IMAGES_DIR/pause.tar" "$PAUSE_IMAGE"
  load_image "$IMAGES_DIR/busybox.tar" "$BUSYBOX_IMAGE"
  start_node
  local port
  for port in "$API_PORT" "${S3_PORTS[@]}"; do
    wait_for "the forwarder on $NODE_HOST_IP:$port" 10 tcp_open "$NODE_HOST_IP" "$port"
  done
  wait_for kube-proxy 30 in_node curl -sf --max-time 2 http://127.0.0.1:10256/healthz
  wait_for "kube-controller-manager" 60 curl -skf --max-time 2 https://127.0.0.1:10257/healthz
  wait_for "kube-scheduler" 60 curl -skf --max-time 2 https://127.0.0.1:10259/healthz
  wait_for "node $NODE_NAME (Ready)" 120 node_ready
  wait_for "the default ServiceAccount's token" 60 default_account_ready
  load_operator_image
  cmd_env >"$ENV_FILE"
  log "node $NODE_NAME up; environment in $ENV_FILE"
  echo "$ENV_FILE"
}

# ---------------------------------------------------------------------------------------------
# down

# Every container of the node, killed and deleted through containerd (the shims unmount their
# root file systems); containerd itself stops after.
stop_containers() {
  [ -S "$SOCKET" ] && running containerd || return 0
  local id
  for id in $(ctr_node tasks ls -q 2>/dev/null); do
    ctr_node tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr_node tasks ls -q 2>/dev/null); do
    for _ in $(seq 50); do
      ctr_node tasks delete -f "$id" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
}

# Shims of this containerd (named by its socket) that outlived it.
stop_shims() {
  local pid
  for pid in $(pgrep -f -- "-address $SOCKET" || true); do
    kill "$pid" 2>/dev/null || true
  done
}

unmount_bed() {
  local target
  # Deepest first.
  awk -v dir="$BED_DIR/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
  done
}

# The pods' own network namespaces that containerd pinned under /run/netns: those holding an
# address of this node's pod range.
remove_pod_netns() {
  local ns prefix=${POD_CIDR%.*}.
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ { print $1 }'); do
    if ip -n "$ns" -4 -o addr show 2>/dev/null | grep -qF " $prefix"; then
      ip netns delete "$ns" 2>/dev/null || true
    fi
  done
}

# The kubelet's cgroups (cgroupfs driver), once empty.
remove_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*/kubepods; do
    [ -d "$dir" ] || continue
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

cmd_down() {
  stop kube-proxy kubelet
  # A bed whose containerd died (with the session that started it) may still have containers:
  # a containerd on the same state finds them, so that they can be killed.
  if ! running containerd && [ -f "$BED_DIR/containerd/config.toml" ] && [ -e "$NETNS_PATH/$NODE_NETNS" ]; then
    start containerd node containerd --config "$BED_DIR/containerd/config.toml"
    for _ in $(seq 100); do ctr_node version >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  stop_containers
  stop containerd
  stop_shims
  local port forwarders=()
  for port in "$API_PORT" "${S3_PORTS[@]}" "$S3_TLS_PORT"; do forwarders+=("forward-$port"); done
  stop kube-scheduler kube-controller-manager "${forwarders[@]}"
  # Its pods go with it (kube-controller-manager's pod GC removes them when it next runs).
  if [ -f "$KUBE_BED_DIR/admin.token" ]; then
    curl -sf --max-time 5 --cacert "$CA_FILE" -H "Authorization: Bearer $(cat "$KUBE_BED_DIR/admin.token")" \
      -X DELETE "https://127.0.0.1:$API_PORT/api/v1/nodes/$NODE_NAME" >/dev/null 2>&1 || true
  fi
  remove_pod_netns
  unmount_bed
  ip link delete "$NODE_HOST_IF" 2>/dev/null || true
  [ -e "$NETNS_PATH/$NODE_NETNS" ] && ip netns delete "$NODE_NETNS"
  # `ip netns add` made /run/netns a mount point: undone when no network namespace is left.
  if [ -z "$(ls -A "$NETNS_PATH" 2>/dev/null)" ] && mountpoint -q "$NETNS_PATH"; then
    umount "$NETNS_PATH" 2>/dev/null || true
  fi
  restore_sysctls
  remove_cgroups
  # Directories the shims and the kubelet made outside the bed, when they made them and they
  # are empty now (rmdir leaves anything else alone).
  rmdir /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd/fifo /run/containerd/s \
    /run/containerd 2>/dev/null || true
  if [ -f "$BED_DIR/made-var-log-pods" ]; then
    rm -rf /var/log/pods /var/log/containers
  fi
  rm -rf "$BED_DIR"
  log "node down"
}

# One `up`, `down` or `load-image` at a time (hack/test.sh and a developer may race).
lock() {
  exec 8>"$BED_DIR.lock"
  flock 8
}

case "${1:-}" in
  install) cmd_install ;;
  up) lock; cmd_up ;;
  env) cmd_env ;;
  down) lock; cmd_down ;;
  load-image)
    [ $# -eq 3 ] || { echo "usage: $0 load-image ARCHIVE REF" >&2; exit 2; }
    lock
    running containerd || die "the node is not up (hack/nodeenv.sh up)"
    load_image "$(realpath "$2")" "$3"
    ;;
  smoke) exec "$HACK_DIR/node/smoke.sh" ;;
  *) echo "usage: $0 install|up|env|down|load-image ARCHIVE REF|smoke" >&2; exit 2 ;;
esac
