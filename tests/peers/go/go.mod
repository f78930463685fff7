// The kubelet-side grpc-go programs of the end-to-end tests (build.sh).
// google.golang.org/grpc, google.golang.org/protobuf and golang.org/x/net are
// pinned to what k8s.io/kubernetes v1.37.2's go.mod requires, and the stubs
// are the kubelet's own (k8s.io/kubelet v0.37.2, the staging module of the
// same release), so this compiles the kubelet's client code paths.
// tags.cncf.io/container-device-interface (cdi/) is the newest release the
// proxy serves, v1.1.2; its specs-go v1.1.x is the one k8s.io/kubernetes
// v1.37.2 requires, and runtime-spec v1.3.0 is the kubelet's too.
// k8s.io/dynamic-resource-allocation v0.37.2 (metadata/) is the same release's
// staging module: its devicemetadata package decodes KEP-5304 metadata files.
module github.com/dra-wasm-host/tests/peers/go

go 1.26.0

require (
	github.com/opencontainers/runtime-spec v1.3.0
	golang.org/x/net v0.57.0
	google.golang.org/grpc v1.82.1
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af
	k8s.io/apimachinery v0.37.2
	k8s.io/dynamic-resource-allocation v0.37.2
	k8s.io/kubelet v0.37.2
	tags.cncf.io/container-device-interface v1.1.2
)

require (
	github.com/fsnotify/fsnotify v1.7.0 // indirect
	github.com/fxamacker/cbor/v2 v2.9.1 // indirect
	github.com/go-logr/logr v1.4.3 // indirect
	github.com/json-iterator/go v1.1.12 // indirect
	github.com/modern-go/concurrent v0.0.0-20180306012644-bacd9c7ef1dd // indirect
	github.com/modern-go/reflect2 v1.0.3-0.20250322232337-35a7c28c31ee // indirect
	github.com/x448/float16 v0.8.4 // indirect
	go.yaml.in/yaml/v2 v2.4.4 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.40.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
	gopkg.in/inf.v0 v0.9.1 // indirect
	k8s.io/api v0.37.2 // indirect
	k8s.io/klog/v2 v2.140.0 // indirect
	k8s.io/kube-openapi v0.0.0-20260721132016-d427ff9ee9ad // indirect
	k8s.io/utils v0.0.0-20260626114624-be93311217bd // indirect
	sigs.k8s.io/json v0.0.0-20250730193827-2d320260d730 // indirect
	sigs.k8s.io/randfill v1.0.0 // indirect
	sigs.k8s.io/structured-merge-diff/v6 v6.4.2 // indirect
	sigs.k8s.io/yaml v1.6.0 // indirect
	tags.cncf.io/container-device-interface/specs-go v1.1.1 // indirect
)
