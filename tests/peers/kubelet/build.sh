#!/usr/bin/env bash
# Builds the kubelet peer (main.go: the kubelet's plugin manager and DRA
# manager from k8s.io/kubernetes v1.37.2) into a cache, once per machine.
#
# The binary goes to a cache keyed by go.mod, go.sum, the sources and this
# script: a second call with nothing changed builds nothing. Prints the
# binary's path as its last line of standard output; progress goes to
# standard error. -trimpath, as tests/k8s/build.sh builds the control plane:
# the packages both need (client-go, apimachinery, ...) are compiled once
# into Go's build cache.
#
#   DRA_KUBELET_PEER_CACHE   the cache's root (default ~/.cache/dra-wasm-host/kubelet-peer)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Go 1.26 or newer, from tests/go.sh.
source "$here/../../go.sh"
need_go "the kubelet peer"

key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here/../../go.sh" "$here"/*.go | sha256sum | cut -c1-16)
cache="${DRA_KUBELET_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dra-wasm-host/kubelet-peer}"
bin="$cache/$key/kubelet-dra"
if [[ -x $bin ]]; then
    echo "$bin"
    exit 0
fi

echo "tests/peers/kubelet/build.sh: building the kubelet peer into $bin" >&2
started=$SECONDS
mkdir -p "$cache/$key"
cd "$here"
go build -mod=readonly -trimpath -ldflags "-s -w" -o "$bin.partial" .
mv "$bin.partial" "$bin"
# Builds for other keys are not used again.
for old in "$cache"/*/; do
    [[ ${old%/} == "$cache/$key" ]] || rm -rf "$old"
done
echo "tests/peers/kubelet/build.sh: built in $((SECONDS - started)) s" >&2
echo "$bin"
