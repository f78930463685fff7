//! Stand-ins for the parts of a Kubernetes node that the host talks to, used
//! by the end-to-end tests and by `dra-wasm-host demo`:
//!
//! - [`kubelet_peer::KubeletPeer`]: the kubelet's own plugin manager and DRA
//!   manager (k8s.io/kubernetes v1.37.2, tests/peers/kubelet) driven by commands;
//! - [`cdi::inject`]: CDI device IDs injected into an OCI spec as containerd does;
//! - [`kubelet::TestKubelet`]: watches the registration directory and calls
//!   plugins exactly as the kubelet does on the wire, kept for calls and
//!   faults on cue, measurements and `demo` (see its header);
//! - [`host::HostEnv`] / [`host::HostProcess`]: a temporary node layout and
//!   the real `dra-wasm-host` binary running in it;
//! - [`controlplane::ControlPlane`]: the real kube-apiserver, etcd,
//!   kube-scheduler and kube-controller-manager 1.37.2 (`tests/k8s/up.sh`),
//!   with `deploy/` applied; claims allocated by the scheduler or by hand;
//! - [`apiserver::TestApiServer`]: an in-memory stand-in for the API server,
//!   kept only for injected faults and the net bench (see its header);
//! - [`claims`]: ResourceClaim objects in the resource.k8s.io/v1 shape;
//! - [`configmap`]: a ConfigMap volume updated the way the kubelet does it;
//! - [`gpus`]: simulated GPUs and NVML event injection;
//! - [`netlab`]: veth parents and pod namespaces for the `net` tests, the CDI hook as runtimes run it;
//! - [`bench`]: arguments and latency summaries for the benchmarks.

pub mod apiserver;
pub mod bench;
pub mod cdi;
pub mod claims;
pub mod configmap;
pub mod controlplane;
pub mod gpus;
pub mod helm;
pub mod host;
pub mod kubelet;
pub mod kubelet_peer;
pub mod netlab;
