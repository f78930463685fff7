#!/usr/bin/env bash
# Builds the grpc-go kubelet peer (main.go) into OUT_DIR/kubelet-peer, the
# probe that records what clients send (probe/main.go) into
# OUT_DIR/authority-probe, and the container runtime's CDI injection
# (cdi/main.go, tags.cncf.io/container-device-interface as containerd 2.x
# and CRI-O use it) into OUT_DIR/cdi-inject, and a workload's decoding of a
# KEP-5304 device metadata file (metadata/main.go,
# k8s.io/dynamic-resource-allocation/devicemetadata v0.37.2) into
# OUT_DIR/metadata-decode.
#
# A Go module (go.mod, go.sum): grpc-go 1.82.1, protobuf-go and
# golang.org/x/net at the versions k8s.io/kubernetes v1.37.2 requires, and
# the kubelet's own generated stubs from k8s.io/kubelet v0.37.2 (no protoc,
# no code generation). The modules come from the Go module proxy (GOPROXY)
# into the module cache, checked against go.sum; nothing is vendored.
#
# Needs Go >= 1.26 (the modules' go directive). When an older go comes first
# on PATH, /usr/local/go/bin/go is used if it is new enough. GOTOOLCHAIN=local:
# the go found here builds, it never downloads another.
#
# Usage: tests/peers/go/build.sh OUT_DIR
set -euo pipefail

out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)

export GO111MODULE=on
# Go 1.26 or newer, from tests/go.sh.
source "$here/../../go.sh"
need_go "the grpc-go peers"

mkdir -p "$out"
out=$(cd "$out" && pwd)
# Go's own build cache where it has one (shared, keyed by content), else OUT_DIR's.
[[ -n $(go env GOCACHE 2>/dev/null) ]] || export GOCACHE=$out/gocache

cd "$here"
go build -mod=readonly -o "$out/kubelet-peer" .
go build -mod=readonly -o "$out/authority-probe" ./probe
go build -mod=readonly -o "$out/cdi-inject" ./cdi
go build -mod=readonly -o "$out/metadata-decode" ./metadata
