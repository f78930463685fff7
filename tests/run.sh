#!/usr/bin/env bash
# The project's test command (see README): installs what the tests need, then
# runs every test: unit tests, end-to-end tests against the real binary, and
# the guests' logic tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# The guests are wasm32-wasip2 components (host/build.rs would add the target too).
rustup target add wasm32-wasip2 >/dev/null

# Manifests and generated ResourceSlices are validated against the 1.37 schemas.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate==1.37.0
# The metrics endpoint is read back with Prometheus' own OpenMetrics parser.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore prometheus-client==0.26.0

# The networking tests (tests/e2e/net.rs, root) create links and namespaces with iproute2.
if ! command -v ip >/dev/null 2>&1; then
    timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq iproute2 >/dev/null
fi

# The real-client tests (tests/e2e/kubelet_clients.rs) speak the kubelet's side
# with clients this project did not write: grpc-go (a Go module at the versions
# k8s.io/kubernetes v1.37.2 requires, built by tests/peers/go/build.sh with
# Go >= 1.26 from the Go module proxy; nothing to install here) and Python
# grpcio. DRA_SKIP_REAL_CLIENTS=1 skips those tests, and so this install.
if [[ ${DRA_SKIP_REAL_CLIENTS:-} != 1 ]]; then
    timeout 600 python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2
fi

# The real control plane (tests/cluster/): kube-apiserver, kube-scheduler,
# kube-controller-manager, kubectl and etcd, built from Go modules (the Go
# module proxy) with the machine's Go 1.26 into a cache, once per machine.
# tests/k8s/up.sh starts them; it needs curl and openssl.
for tool in curl openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$tool" >/dev/null
    fi
done
k8s_started=$SECONDS
tests/k8s/build.sh >/dev/null
echo "tests/run.sh: control plane binaries ready in $((SECONDS - k8s_started)) s"
# Real Helm (v4.3.2, from helm.sh/helm/v4) for the chart's tests, built the same way.
helm_started=$SECONDS
tests/helm/build.sh >/dev/null
echo "tests/run.sh: helm ready in $((SECONDS - helm_started)) s"
# The kubelet's own DRA code (tests/peers/kubelet: the plugin manager and DRA
# manager of k8s.io/kubernetes v1.37.2) that drives tests/cluster/real_kubelet.rs,
# built into a cache the same way, after the control plane so that the
# packages both use come from Go's build cache.
peer_started=$SECONDS
tests/peers/kubelet/build.sh >/dev/null
echo "tests/run.sh: kubelet peer ready in $((SECONDS - peer_started)) s"

cargo test --workspace --locked
# The guests' logic and the guest SDK compiled natively (its tests and doc examples).
cargo test --locked --manifest-path guests/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}/guest-logic" -p dra-driver-sdk -p example-driver -p gpu-driver -p macvlan-driver
