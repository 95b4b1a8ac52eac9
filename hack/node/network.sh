# shellcheck shell=bash disable=SC2034
# The network plan of the test cluster, shared by hack/kubeenv.sh (the API server's advertised
# address and service range) and hack/nodeenv.sh (the node). Sourced, not run.
#
# Nothing here is routed off the machine: the node (kubelet, containerd, kube-proxy and every pod)
# lives in its own network namespace, joined to this machine by one veth pair and with no default
# route, so a packet from a pod can reach this machine's NODE_HOST_IP and other pods, nothing else.
#
#   this machine (host netns)                  node netns "$NODE_NETNS"
#   $NODE_HOST_IF  10.250.0.1/30  <-- veth -->  $NODE_IF  10.250.0.2/30 (the node IP)
#   forwarders on 10.250.0.1 to 127.0.0.1       bridge $NODE_BRIDGE 10.244.0.1/24, pods 10.244.0.0/24
#   route 10.244.0.0/24 via 10.250.0.2          kube-proxy: services 10.96.0.0/16 (iptables DNAT);
#                                               route 10.96.0.0/16 to the bridge, so the node's
#                                               own processes reach services too, and a packet
#                                               for no service dies there (no one answers ARP)

# The address at which pods reach servers on this machine (MPU_TEST_POD_HOST); kube-apiserver
# advertises it, so the `kubernetes` service's endpoint is a forwarder on it.
NODE_HOST_IP=10.250.0.1
NODE_IP=10.250.0.2
NODE_LINK_PREFIX=30
NODE_NAME=mpu-node
NODE_NETNS=mpu-sweeper-node
NODE_HOST_IF=mpunode0
NODE_IF=node0
NODE_BRIDGE=mpubr0
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
