#!/usr/bin/env bash
# Builds the real control plane from Go modules, once per machine:
# kube-apiserver, kube-scheduler, kube-controller-manager and kubectl from
# k8s.io/kubernetes v1.37.2 (version stamped, so /version answers v1.37.2), and
# etcd from go.etcd.io/etcd/server/v3 at the version Kubernetes requires.
#
# The binaries go to a cache keyed by this module's go.mod, go.sum, sources
# and this script: a second call with nothing changed builds nothing. Prints
# the binaries' directory as its last line of standard output; progress goes
# to standard error.
#
#   DRA_K8S_CACHE   the cache's root (default ~/.cache/dra-wasm-host/k8s)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Go 1.26 or newer, from tests/go.sh.
source "$here/../go.sh"
need_go "the control plane"

version=v1.37.2
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here/../go.sh" "$here"/etcd/*.go | sha256sum | cut -c1-16)
cache="${DRA_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dra-wasm-host/k8s}"
bin="$cache/$key/bin"
commands=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl)

complete=1
for c in "${commands[@]}"; do [[ -x $bin/$c ]] || complete=0; done
if ((complete)); then
    echo "$bin"
    exit 0
fi

echo "tests/k8s/build.sh: building the control plane ${version} into $bin (a cold build takes several minutes)" >&2
started=$SECONDS
tmp="$cache/$key/bin.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=37 -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
# kubectl reports its version through client-go's copy of the same variables.
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37"
cd "$here"
go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    ./etcd \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
rm -rf "$bin"
mv "$tmp" "$bin"
# Builds for other keys (an older go.sum) are not used again.
for old in "$cache"/*/; do
    [[ ${old%/} == "$cache/$key" ]] || rm -rf "$old"
done
echo "tests/k8s/build.sh: built in $((SECONDS - started)) s" >&2
echo "$bin"
