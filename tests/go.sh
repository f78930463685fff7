# Sourced by the Go build scripts under tests/ (k8s, helm, peers/*): one way to
# find the Go that builds them and to set the environment every build uses.
#
#   source "$repo/tests/go.sh"; need_go "the control plane"

# The minor version of the Go at $1 (1.N -> N), or 0.
go_minor() {
    local v
    v=$("$1" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    echo "${v:-0}"
}

# Put a Go >= 1.26 first on PATH (the machine's /usr/local/go when an older
# one, Debian's, comes first), or fail naming what it was needed for. The go
# found here builds; it never downloads another toolchain.
need_go() {
    if [[ -x /usr/local/go/bin/go ]] && (($(go_minor /usr/local/go/bin/go) >= 26)); then
        export PATH="/usr/local/go/bin:$PATH"
    fi
    if ! command -v go >/dev/null 2>&1 || (($(go_minor go) < 26)); then
        echo "$0: Go 1.26 or newer is needed to build $1; found: $(go version 2>&1)" >&2
        exit 1
    fi
    export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
}
