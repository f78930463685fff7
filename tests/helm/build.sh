#!/usr/bin/env bash
# Builds real Helm (helm.sh/helm/v4 v4.3.2, the `helm` command) from Go
# modules, once per machine, for the chart tests (tests/e2e/chart.rs).
#
# The binary goes to a cache keyed by this module's go.mod, go.sum and this
# script: a second call with nothing changed builds nothing. Prints the
# binary's path as its last line of standard output; progress goes to
# standard error.
#
#   DRA_HELM_CACHE   the cache's root (default ~/.cache/dra-wasm-host/helm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Go 1.26 or newer, from tests/go.sh.
source "$here/../go.sh"
need_go "Helm"

version=v4.3.2
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here/../go.sh" | sha256sum | cut -c1-16)
cache="${DRA_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dra-wasm-host/helm}"
bin="$cache/$key/bin"
if [[ -x $bin/helm ]]; then
    echo "$bin/helm"
    exit 0
fi

echo "tests/helm/build.sh: building helm ${version} into $bin" >&2
started=$SECONDS
tmp="$cache/$key/bin.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
cd "$here"
# `helm version` answers the release, not the module's "v4.3" default.
go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${version}" -o "$tmp/" helm.sh/helm/v4/cmd/helm
rm -rf "$bin"
mv "$tmp" "$bin"
for old in "$cache"/*/; do
    [[ ${old%/} == "$cache/$key" ]] || rm -rf "$old"
done
echo "tests/helm/build.sh: built in $((SECONDS - started)) s" >&2
echo "$bin/helm"
