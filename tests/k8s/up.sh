#!/usr/bin/env bash
# A real Kubernetes 1.37.2 control plane on loopback, for the test suite and
# for your own experiments:
#
#   tests/k8s/up.sh [--scheduler]
#
# Starts etcd and kube-apiserver (built from Go modules by build.sh) under a
# new temporary directory, with generated certificates and service-account
# keys, the API server's default feature gates and APIs (resource.k8s.io/v1
# and the DRA gates as a default 1.37 cluster has them), the Node and RBAC
# authorizers and the NodeRestriction admission plugin, as kubeadm sets them.
# With --scheduler it also starts kube-scheduler and the controllers a DRA
# Pod needs: kube-controller-manager's resourceclaim controller (claims from
# ResourceClaimTemplates), serviceaccount (each namespace's default account),
# garbage-collector (claims go with their Pod) and
# validatingadmissionpolicy-status (status.typeChecking of admission
# policies). No kubelet runs: create Node objects yourself (the tests do so
# in tests/src/controlplane.rs).
#
# When the API server is ready, the first line of standard output is
#   KUBECONFIG=<admin kubeconfig>
# and then lines naming the other files (kubectl, the CA, the directory). It
# runs until it gets SIGTERM, SIGINT or SIGHUP, then stops what it started and
# removes its directory. While it runs:
#   SIGUSR1  kills etcd and kube-apiserver (the API server "goes away");
#   SIGUSR2  starts them again on the same ports and data.
# Each prints a line ("stopped" / "KUBECONFIG=…" again once ready).
# Components' logs are in <dir>/logs/, with audit.log: every request of the
# dra-wasm-host ServiceAccounts. Ports are chosen by the OS.
# DRA_K8S_BIN names a directory of binaries to use instead of build.sh's;
# DRA_K8S_START_TIMEOUT (seconds, default 180) bounds the API server's start.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

scheduler=0
for arg in "$@"; do
    case $arg in
        --scheduler) scheduler=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "up.sh: unknown argument '$arg' (see --help)" >&2
            exit 2
            ;;
    esac
done

# DRA_K8S_BIN: a directory with the five binaries to use instead of build.sh's.
bin=${DRA_K8S_BIN:-$("$here/build.sh" | tail -n 1)}
dir=$(mktemp -d "${TMPDIR:-/tmp}/dwh-k8s.XXXXXX")
mkdir -p "$dir/pki" "$dir/logs"
declare -A pid=()

alive() { # alive PID: running, not a zombie
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [[ $state != Z ]]
}
stop() { # stop SIGNAL NAME...: signal each, then wait until each is gone (SIGKILL after 10 s)
    local sig=$1 n p deadline
    shift
    for n in "$@"; do
        p=${pid[$n]:-}
        [[ -n $p ]] && kill "-$sig" "$p" 2>/dev/null || true
    done
    for n in "$@"; do
        p=${pid[$n]:-}
        [[ -n $p ]] || continue
        deadline=$((SECONDS + 10))
        # A loop, not one wait: another signal would interrupt a wait.
        while alive "$p"; do
            ((SECONDS < deadline)) || kill -KILL "$p" 2>/dev/null || true
            sleep 0.1
        done
        wait "$p" 2>/dev/null || true
        unset "pid[$n]"
    done
}
cleanup() {
    # Ignore further signals rather than restore their defaults: a second
    # SIGTERM (a test's Drop, then the parent-death signal as the test
    # process exits) would otherwise end this shell half-way and leave the
    # components running.
    trap - EXIT
    trap '' TERM INT HUP USR1 USR2
    # etcd last: an API server that loses its storage first takes its whole
    # grace period to stop.
    stop TERM kube-controller-manager kube-scheduler kube-apiserver
    stop TERM etcd
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 0' TERM INT HUP

# Free loopback ports, chosen by the OS (bound together so they differ).
read -r etcd_port etcd_peer_port api_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
server="https://127.0.0.1:$api_port"

# --- certificates and keys -------------------------------------------------
pki=$dir/pki
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=dra-wasm-host test CA" -keyout "$pki/ca.key" -out "$pki/ca.crt"
sign() { # sign NAME SUBJECT EXTENSIONS
    ossl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
        -keyout "$pki/$1.key" -out "$pki/$1.csr"
    ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 7 -out "$pki/$1.crt" -extfile <(printf '%s\n' "$3")
}
sign apiserver "/CN=kube-apiserver" "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment')"
client_ext=$'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment'
sign admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
sign scheduler "/CN=system:kube-scheduler" "$client_ext"
# Service-account tokens (TokenRequest, bound tokens) are signed with this key.
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

kubeconfig() { # kubeconfig FILE CERT-NAME
    cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: dwh-test
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: dwh-test
  context: {cluster: dwh-test, user: $2}
current-context: dwh-test
YAML
}
# The audit log records every request of the host's ServiceAccount
# (the chart's ServiceAccount) with its verb, object and node (a bound token's
# extra), so tests can count what one node's host asked of the API server.
cat >"$dir/audit-policy.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts:dra-wasm-host"]
- level: None
YAML

kubeconfig "$dir/admin.kubeconfig" admin
kubeconfig "$dir/scheduler.kubeconfig" scheduler

# --- components -------------------------------------------------------------
# Each component gets SIGTERM if this shell dies without cleaning up (SIGKILL).
guard=()
if command -v setpriv >/dev/null 2>&1; then
    guard=(setpriv --pdeathsig TERM --)
fi
start_etcd() {
    # No fsync: a test cluster's data need not survive a power cut, and on a
    # slow disk etcd's fsyncs would dominate every write.
    "${guard[@]}" "$bin/etcd" --name dwh --data-dir "$dir/etcd" --log-level warn --unsafe-no-fsync \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
        --initial-cluster "dwh=http://127.0.0.1:$etcd_peer_port" \
        >>"$dir/logs/etcd.log" 2>&1 &
    pid[etcd]=$!
}
start_apiserver() {
    "${guard[@]}" "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --service-cluster-ip-range 10.96.0.0/16 \
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --allow-privileged=true \
        --endpoint-reconciler-type none \
        --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log" --audit-log-format json \
        --profiling=false \
        >>"$dir/logs/kube-apiserver.log" 2>&1 &
    pid[kube-apiserver]=$!
}
wait_ready() {
    local deadline=$((SECONDS + ${DRA_K8S_START_TIMEOUT:-180}))
    until curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz" >/dev/null 2>&1; do
        if ! kill -0 "${pid[kube-apiserver]}" 2>/dev/null || ! kill -0 "${pid[etcd]}" 2>/dev/null; then
            echo "up.sh: etcd or kube-apiserver exited; the last lines of their logs ($dir/logs):" >&2
            tail -n 20 "$dir/logs/etcd.log" "$dir/logs/kube-apiserver.log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "up.sh: kube-apiserver not ready at $server/readyz after ${DRA_K8S_START_TIMEOUT:-180} s; see $dir/logs" >&2
            exit 1
        fi
        sleep 0.2
    done
}
announce() {
    echo "KUBECONFIG=$dir/admin.kubeconfig"
}

start_etcd
start_apiserver
wait_ready
if ((scheduler)); then
    "${guard[@]}" "$bin/kube-scheduler" --kubeconfig "$dir/scheduler.kubeconfig" \
        --authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
        --leader-elect=false --secure-port 0 \
        >>"$dir/logs/kube-scheduler.log" 2>&1 &
    pid[kube-scheduler]=$!
    # The controller manager acts with the admin's credentials (a test
    # cluster; kubeadm gives it a certificate of its own).
    "${guard[@]}" "$bin/kube-controller-manager" --kubeconfig "$dir/admin.kubeconfig" \
        --controllers resourceclaim-controller,serviceaccount-controller,garbage-collector-controller,validatingadmissionpolicy-status-controller \
        --leader-elect=false --secure-port 0 \
        >>"$dir/logs/kube-controller-manager.log" 2>&1 &
    pid[kube-controller-manager]=$!
fi
announce
echo "KUBECTL=$bin/kubectl"
echo "CA=$pki/ca.crt"
echo "SERVER=$server"
echo "DIR=$dir"

trap 'stop KILL kube-apiserver etcd; echo stopped' USR1
trap 'start_etcd; start_apiserver; wait_ready; announce' USR2
# Wait for a signal; if a component dies on its own, say so and stop the rest.
while true; do
    wait -n "${pid[@]}" 2>/dev/null || true
    for n in "${!pid[@]}"; do
        if ! kill -0 "${pid[$n]}" 2>/dev/null; then
            echo "up.sh: $n exited on its own; its log: $dir/logs/$n.log" >&2
            tail -n 20 "$dir/logs/$n.log" >&2
            exit 1
        fi
    done
    if ((${#pid[@]} == 0)); then
        sleep 1 & wait $! || true
    fi
done
