// A DRA driver written the way kubernetes-sigs/dra-example-driver's kubelet
// plugin is (cmd/dra-example-kubeletplugin), for tests/bench/peers.rs: the
// peer the host is compared with. The example driver's own module
// (sigs.k8s.io/dra-example-driver) is not served by the Go module proxy, so
// this is the same work written on k8s.io/dynamic-resource-allocation's
// kubeletplugin helper v0.37.2:
//
//   - kubeletplugin.Start with the helper's defaults (gRPC calls serialized,
//     the claim read from the API server by the helper before Prepare);
//   - one ResourceSlice pool on the node with --num-devices GPUs, published
//     through Helper.PublishResources;
//   - per prepare: the checkpoint (a JSON file in the plugin directory) is
//     read, the claim's devices are checked against the other prepared
//     claims, a CDI spec file for the claim
//     (tags.cncf.io/container-device-interface's spec types) is written to --cdi-root, and the
//     checkpoint is written again; per unprepare: the spec file is removed
//     and the checkpoint written without the claim. Each file is written as
//     the example driver's libraries write them: to a temporary file, fsync,
//     rename.
//
// It prints "registered" once the kubelet has registered it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

const checkpointFile = "checkpoint.json"

func main() {
	nodeName := flag.String("node-name", "", "the node this driver runs on")
	cdiRoot := flag.String("cdi-root", "/etc/cdi", "where CDI spec files are written")
	registrar := flag.String("kubelet-registrar-directory-path", kubeletplugin.KubeletRegistryDir, "the kubelet's plugin registration directory")
	plugins := flag.String("kubelet-plugins-directory-path", kubeletplugin.KubeletPluginsDir, "the kubelet's plugin directory; the driver's own is <path>/<driver-name>")
	numDevices := flag.Int("num-devices", 8, "how many GPUs the node has")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	driverName := flag.String("driver-name", "gpu.example.com", "the DRA driver's name")
	qps := flag.Float64("kube-api-qps", 5, "client-side QPS limit of the API client (client-go's default, as the example driver's)")
	burst := flag.Int("kube-api-burst", 10, "client-side burst of the API client")
	flag.Parse()
	if err := run(*nodeName, *cdiRoot, *registrar, *plugins, *numDevices, *kubeconfig, *driverName, float32(*qps), *burst); err != nil {
		fmt.Fprintln(os.Stderr, "exampledriver:", err)
		os.Exit(1)
	}
}

func run(nodeName, cdiRoot, registrar, plugins string, numDevices int, kubeconfig, driverName string, qps float32, burst int) error {
	if nodeName == "" {
		return errors.New("--node-name is required")
	}
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	config.QPS, config.Burst = qps, burst
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	pluginDir := filepath.Join(plugins, driverName)
	for _, dir := range []string{pluginDir, cdiRoot, registrar} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	d := &driver{
		name:       driverName,
		pool:       nodeName,
		cdiRoot:    cdiRoot,
		checkpoint: filepath.Join(pluginDir, checkpointFile),
		devices:    map[string]bool{},
		cancel:     cancel,
	}
	for i := 0; i < numDevices; i++ {
		d.devices[fmt.Sprintf("gpu-%d", i)] = true
	}
	if _, err := os.Stat(d.checkpoint); errors.Is(err, os.ErrNotExist) {
		if err := writeJSON(d.checkpoint, checkpoint{Claims: map[types.UID]preparedClaim{}}); err != nil {
			return fmt.Errorf("creating the checkpoint: %w", err)
		}
	}

	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.KubeClient(client),
		kubeletplugin.NodeName(nodeName),
		kubeletplugin.DriverName(driverName),
		kubeletplugin.RegistrarDirectoryPath(registrar),
		kubeletplugin.PluginDataDirectoryPath(pluginDir),
	)
	if err != nil {
		return fmt.Errorf("starting the kubelet plugin helper: %w", err)
	}
	defer helper.Stop()

	if err := helper.PublishResources(ctx, resourceslice.DriverResources{
		Pools: map[string]resourceslice.Pool{
			nodeName: {Slices: []resourceslice.Slice{{Devices: gpus(numDevices)}}},
		},
	}); err != nil {
		return fmt.Errorf("publishing ResourceSlices: %w", err)
	}

	registered := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
		if status := helper.RegistrationStatus(); !registered && status != nil && status.PluginRegistered {
			registered = true
			fmt.Println("registered")
		}
	}
}

// gpus describes n devices as the example driver's gpu profile does: an
// index, a UUID, a model and driver version, and memory.
func gpus(n int) []resourceapi.Device {
	devices := make([]resourceapi.Device, 0, n)
	for i := 0; i < n; i++ {
		devices = append(devices, resourceapi.Device{
			Name: fmt.Sprintf("gpu-%d", i),
			Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				"index":         {IntValue: ptr.To(int64(i))},
				"uuid":          {StringValue: ptr.To(fmt.Sprintf("gpu-%08x-0000-0000-0000-000000000000", i))},
				"model":         {StringValue: ptr.To("LATEST-GPU-MODEL")},
				"driverVersion": {VersionValue: ptr.To("1.0.0")},
			},
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
				"memory": {Value: resource.MustParse("80Gi")},
			},
		})
	}
	return devices
}

type driver struct {
	name, pool, cdiRoot, checkpoint string
	devices                         map[string]bool
	cancel                          context.CancelFunc
	// The example driver's DeviceState holds one lock over a prepare or an
	// unprepare, checkpoint included.
	mu sync.Mutex
}

// The checkpoint: what each prepared claim got, so that unprepare (which
// gets only the claim's UID) can undo it and a restart finds it.
type checkpoint struct {
	Claims map[types.UID]preparedClaim `json:"claims"`
}

type preparedClaim struct {
	Namespace string           `json:"namespace"`
	Name      string           `json:"name"`
	Devices   []preparedDevice `json:"devices"`
}

type preparedDevice struct {
	Requests     []string `json:"requests"`
	PoolName     string   `json:"poolName"`
	DeviceName   string   `json:"deviceName"`
	CDIDeviceIDs []string `json:"cdiDeviceIDs"`
}

func (d *driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	result := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, claim := range claims {
		devices, err := d.prepare(claim)
		if err != nil {
			result[claim.UID] = kubeletplugin.PrepareResult{Err: fmt.Errorf("claim %s/%s: %w", claim.Namespace, claim.Name, err)}
			continue
		}
		out := make([]kubeletplugin.Device, 0, len(devices))
		for _, dev := range devices {
			out = append(out, kubeletplugin.Device{Requests: dev.Requests, PoolName: dev.PoolName, DeviceName: dev.DeviceName, CDIDeviceIDs: dev.CDIDeviceIDs})
		}
		result[claim.UID] = kubeletplugin.PrepareResult{Devices: out}
	}
	return result, nil
}

func (d *driver) prepare(claim *resourceapi.ResourceClaim) ([]preparedDevice, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp, err := d.readCheckpoint()
	if err != nil {
		return nil, err
	}
	if prepared, ok := cp.Claims[claim.UID]; ok {
		return prepared.Devices, nil
	}
	if claim.Status.Allocation == nil {
		return nil, errors.New("not allocated")
	}
	inUse := map[string]types.UID{}
	for uid, c := range cp.Claims {
		for _, dev := range c.Devices {
			inUse[dev.DeviceName] = uid
		}
	}
	cdiKind := "k8s." + d.name + "/gpu"
	var devices []preparedDevice
	var specDevices []cdispecs.Device
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != d.name {
			continue
		}
		if r.Pool != d.pool || !d.devices[r.Device] {
			return nil, fmt.Errorf("device %s/%s is not on this node", r.Pool, r.Device)
		}
		if other, ok := inUse[r.Device]; ok {
			return nil, fmt.Errorf("device %s is in use by claim %s", r.Device, other)
		}
		unique := string(claim.UID) + "-" + r.Device
		specDevices = append(specDevices, cdispecs.Device{
			Name: unique,
			ContainerEdits: cdispecs.ContainerEdits{Env: []string{
				fmt.Sprintf("GPU_DEVICE_%s=%s", strings.TrimPrefix(r.Device, "gpu-"), r.Device),
			}},
		})
		devices = append(devices, preparedDevice{
			Requests:     []string{r.Request},
			PoolName:     r.Pool,
			DeviceName:   r.Device,
			CDIDeviceIDs: []string{cdiKind + "=" + unique},
		})
	}
	spec := cdispecs.Spec{
		Version: "0.8.0",
		Kind:    cdiKind,
		Devices: specDevices,
		ContainerEdits: cdispecs.ContainerEdits{Env: []string{
			"DRA_RESOURCE_DRIVER_NAME=" + d.name,
			"DRA_CLAIM_UID=" + string(claim.UID),
		}},
	}
	if err := writeJSON(d.specPath(claim.UID), spec); err != nil {
		return nil, fmt.Errorf("writing the CDI spec: %w", err)
	}
	cp.Claims[claim.UID] = preparedClaim{Namespace: claim.Namespace, Name: claim.Name, Devices: devices}
	if err := writeJSON(d.checkpoint, cp); err != nil {
		return nil, fmt.Errorf("writing the checkpoint: %w", err)
	}
	return devices, nil
}

func (d *driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	result := make(map[types.UID]error, len(claims))
	for _, claim := range claims {
		result[claim.UID] = d.unprepare(claim.UID)
	}
	return result, nil
}

func (d *driver) unprepare(uid types.UID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp, err := d.readCheckpoint()
	if err != nil {
		return err
	}
	if _, ok := cp.Claims[uid]; !ok {
		return nil
	}
	if err := os.Remove(d.specPath(uid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the CDI spec: %w", err)
	}
	delete(cp.Claims, uid)
	if err := writeJSON(d.checkpoint, cp); err != nil {
		return fmt.Errorf("writing the checkpoint: %w", err)
	}
	return nil
}

func (d *driver) HandleError(ctx context.Context, err error, msg string) {
	runtime.HandleErrorWithContext(ctx, err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		klog.FromContext(ctx).Error(err, "fatal, stopping")
		d.cancel()
	}
}

func (d *driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

func (d *driver) specPath(uid types.UID) string {
	return filepath.Join(d.cdiRoot, fmt.Sprintf("k8s.%s-claim_%s.json", d.name, uid))
}

func (d *driver) readCheckpoint() (checkpoint, error) {
	data, err := os.ReadFile(d.checkpoint)
	if err != nil {
		return checkpoint{}, fmt.Errorf("reading the checkpoint: %w", err)
	}
	var cp checkpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		return checkpoint{}, fmt.Errorf("the checkpoint: %w", err)
	}
	if cp.Claims == nil {
		cp.Claims = map[types.UID]preparedClaim{}
	}
	return cp, nil
}

// writeJSON writes v to path durably: a temporary file beside it, fsync,
// rename over path.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

var _ kubeletplugin.DRAPlugin = (*driver)(nil)
