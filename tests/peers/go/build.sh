#!/usr/bin/env bash
# Builds the grpc-go kubelet peer (main.go) into OUT_DIR/kubelet-peer, and
# the probe that records what clients send (probe/main.go) into
# OUT_DIR/authority-probe.
#
# Offline, from Debian's packages only (tests/run.sh installs them): golang-go,
# golang-google-grpc-dev (grpc-go 1.33.3), golang-google-protobuf-dev and
# protobuf-compiler (golang-golang-x-net-dev, which the probe uses, comes
# with grpc-go). Go builds in GOPATH mode against /usr/share/gocode; no
# module proxy is asked for anything.
#
# Stubs are generated from proto/ at build time. The code generators are built
# from the same Debian sources: protoc-gen-go from google.golang.org/protobuf
# (1.28; it supports the proto3 `optional` field in dra_v1.proto, which the
# older protoc-gen-go 1.3 plugin refuses) and protoc-gen-go-grpc from the
# grpc-go 1.33.3 tree, so the stubs match the grpc-go they are compiled with.
#
# Usage: tests/peers/go/build.sh OUT_DIR
set -euo pipefail

out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../../proto" && pwd)
gocode=/usr/share/gocode

for tool in go protoc; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found; run tests/run.sh, which installs it" >&2; exit 2; }
done
[[ -d $gocode/src/google.golang.org/grpc && -d $gocode/src/google.golang.org/protobuf ]] ||
    { echo "build.sh: grpc-go or protobuf sources missing under $gocode; run tests/run.sh, which installs them" >&2; exit 2; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
export GO111MODULE=off GOFLAGS= GOPATH="$out/gopath:$gocode" GOCACHE="$out/gocache"

go build -o "$out/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$out/bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc

# Each .proto file becomes its own Go package under dwhpeer/gen/.
src=$out/gopath/src/dwhpeer
rm -rf "$src"
mkdir -p "$src"
map=Mpluginregistration.proto=dwhpeer/gen/registration
map+=,Mdra_v1.proto=dwhpeer/gen/drav1,Mdra_v1beta1.proto=dwhpeer/gen/drav1beta1
map+=,Mdra_health_v1.proto=dwhpeer/gen/healthv1,Mdra_health_v1alpha1.proto=dwhpeer/gen/healthv1alpha1
PATH="$out/bin:$PATH" protoc -I "$proto" \
    --go_out="$map:$out/gopath/src" --go-grpc_out="$map:$out/gopath/src" \
    pluginregistration.proto dra_v1.proto dra_v1beta1.proto dra_health_v1.proto dra_health_v1alpha1.proto
cp "$here/main.go" "$src/main.go"
mkdir -p "$src/probe"
cp "$here/probe/main.go" "$src/probe/main.go"
go build -o "$out/kubelet-peer" dwhpeer
go build -o "$out/authority-probe" dwhpeer/probe
