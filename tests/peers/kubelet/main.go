// Command kubelet-dra is the kubelet's DRA side for the end-to-end tests,
// made of the kubelet's own packages at v1.37.2 (k8s.io/kubernetes):
//
//   - pkg/kubelet/pluginmanager: the plugin watcher on <root>/plugins_registry
//     and its reconciler, which dial the registration socket, call GetInfo
//     and NotifyRegistrationStatus, and hand the plugin to the DRA handler;
//   - pkg/kubelet/cm/dra: the DRA manager, constructed and started as the
//     kubelet's container manager does (NewManager with the kubelet root as
//     its state directory, Start, GetWatcherHandler registered for
//     "DRAPlugin"). Through it come the DRA plugin manager and client of
//     pkg/kubelet/cm/dra/plugin (the NewClient dial, service choice, the call
//     timeout, the health stream), PrepareResources(pod) with its checkpoint,
//     GetResources (the CDI device IDs the runtime is given) and the health
//     cache behind a container's allocatedResourcesStatus.
//
// Pods and ResourceClaims are read from the API server the kubeconfig names.
// What the kubelet itself does around these packages (pod workers, the
// runtime) is replaced by commands: one JSON object per line on standard
// input, each answered by one line on standard output with the same "id":
//
//	{"id":1,"op":"wait-driver","driver":"example.dra.dev","timeout_s":60}
//	{"id":2,"op":"prepare","namespace":"ns","pod":"name"}   -> {"containers":{"c":[CDI IDs]}}
//	{"id":3,"op":"resources","namespace":"ns","pod":"name"} -> the same, without preparing
//	{"id":4,"op":"health","namespace":"ns","pod":"name"}    -> {"containers":{"c":[allocatedResourcesStatus]}}
//	  ("write":true also writes them into the Pod's status, as the status manager would)
//	{"id":5,"op":"unprepare","namespace":"ns","pod":"name"}
//
// Failures answer {"id":N,"ok":false,"error":"..."}. Lines with "event"
// instead of "id" report what the plugin watcher handed the DRA handler
// (validate, register, deregister) and health updates for pods. The kubelet's
// logs (klog) go to standard error.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	draplugin "k8s.io/kubernetes/pkg/kubelet/cm/dra/plugin"
	"k8s.io/kubernetes/pkg/kubelet/config"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager/cache"
)

// out serializes the lines written to standard output.
type out struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (o *out) write(v any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.enc.Encode(v)
}

type request struct {
	ID        int64  `json:"id"`
	Op        string `json:"op"`
	Driver    string `json:"driver"`
	TimeoutS  int    `json:"timeout_s"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// For "health": also write the containers' allocatedResourcesStatus
	// into the Pod's status in the API server, as the kubelet's status
	// manager would.
	Write bool `json:"write"`
}

// peer is one kubelet: its DRA manager, the pods it has admitted, its client.
type peer struct {
	out     *out
	client  kubernetes.Interface
	manager *dra.Manager
	plugins *draplugin.DRAPluginManager

	node string

	mu     sync.Mutex
	pods   map[string]*v1.Pod // namespace/name -> the pod as last read
	active []*v1.Pod          // the last list of the node's pods
}

// watchHandler is the DRA manager's plugin handler, reporting each call of
// the plugin watcher's reconciler as an event.
type watchHandler struct {
	cache.PluginHandler
	out *out
}

func (h watchHandler) ValidatePlugin(ctx context.Context, name, endpoint string, versions []string) error {
	err := h.PluginHandler.ValidatePlugin(ctx, name, endpoint, versions)
	h.out.write(map[string]any{"event": "validate", "driver": name, "endpoint": endpoint, "versions": versions, "error": errString(err)})
	return err
}

func (h watchHandler) RegisterPlugin(ctx context.Context, name, endpoint string, versions []string, timeout *time.Duration) error {
	err := h.PluginHandler.RegisterPlugin(ctx, name, endpoint, versions, timeout)
	h.out.write(map[string]any{"event": "register", "driver": name, "endpoint": endpoint, "versions": versions, "error": errString(err)})
	return err
}

func (h watchHandler) DeRegisterPlugin(ctx context.Context, name, endpoint string) {
	h.PluginHandler.DeRegisterPlugin(ctx, name, endpoint)
	h.out.write(map[string]any{"event": "deregister", "driver": name, "endpoint": endpoint})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// recorder logs the plugin manager's events (it records registration
// failures as Events on the Node) instead of sending them.
type recorder struct{ logger klog.Logger }

func (r recorder) Event(_ runtime.Object, eventtype, reason, message string) {
	r.logger.Info("Event", "type", eventtype, "reason", reason, "message", message)
}

func (r recorder) Eventf(o runtime.Object, eventtype, reason, format string, args ...any) {
	r.Event(o, eventtype, reason, fmt.Sprintf(format, args...))
}

func (r recorder) AnnotatedEventf(o runtime.Object, _ map[string]string, eventtype, reason, format string, args ...any) {
	r.Event(o, eventtype, reason, fmt.Sprintf(format, args...))
}

func main() {
	root := flag.String("root", "", "the kubelet's root directory: plugins_registry and the DRA manager's checkpoint are in it")
	kubeconfig := flag.String("kubeconfig", "", "credentials for the API server")
	nodeName := flag.String("node", "", "the Node this kubelet runs")
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	verbosity := flag.String("v", "4", "klog verbosity")
	flag.Parse()
	_ = klogFlags.Set("v", *verbosity)
	_ = klogFlags.Set("logtostderr", "true")
	if *root == "" || *kubeconfig == "" || *nodeName == "" {
		fmt.Fprintln(os.Stderr, "usage: kubelet-dra -root DIR -kubeconfig FILE -node NAME")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	logger := klog.Background()
	ctx = klog.NewContext(ctx, logger)
	o := &out{enc: json.NewEncoder(os.Stdout)}

	restConfig, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fatal("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		fatal("client: %v", err)
	}

	p := &peer{out: o, client: client, node: *nodeName, pods: map[string]*v1.Pod{}}
	// As the container manager does: the kubelet root as state directory.
	p.manager, err = dra.NewManager(logger, client, *root)
	if err != nil {
		fatal("DRA manager: %v", err)
	}
	getNode := func(ctx context.Context) (*v1.Node, error) {
		return client.CoreV1().Nodes().Get(ctx, *nodeName, metav1.GetOptions{})
	}
	sourcesReady := config.NewSourcesReady(func(sets.Set[string]) bool { return true })
	if err := p.manager.Start(ctx, p.activePods, getNode, sourcesReady); err != nil {
		fatal("starting the DRA manager: %v", err)
	}
	handler := p.manager.GetWatcherHandler()
	plugins, ok := handler.(*draplugin.DRAPluginManager)
	if !ok {
		fatal("the DRA manager's watcher handler is a %T, not the DRA plugin manager", handler)
	}
	p.plugins = plugins

	// The health updates the kubelet's pod workers would act on.
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case u := <-p.manager.Updates():
				uids := make([]string, 0, len(u.PodUIDs))
				for _, uid := range u.PodUIDs {
					uids = append(uids, string(uid))
				}
				sort.Strings(uids)
				o.write(map[string]any{"event": "health-update", "pods": uids})
			}
		}
	}()

	registry := filepath.Join(*root, "plugins_registry")
	pm := pluginmanager.NewPluginManager(registry, recorder{logger})
	pm.AddHandler(registerapi.DRAPlugin, watchHandler{PluginHandler: handler, out: o})
	stopCh := make(chan struct{})
	go pm.Run(ctx, sourcesReady, stopCh)
	o.write(map[string]any{"event": "started", "registry": registry})

	lines := make(chan string)
	go func() {
		scanner := bufio.NewScanner(os.Stdin)
		scanner.Buffer(make([]byte, 1<<20), 1<<20)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		close(lines)
	}()
	var wg sync.WaitGroup
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case line, more := <-lines:
			if !more {
				break loop
			}
			var req request
			if err := json.Unmarshal([]byte(line), &req); err != nil {
				o.write(map[string]any{"event": "bad-request", "line": line, "error": err.Error()})
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				reply, err := p.handle(ctx, req)
				if reply == nil {
					reply = map[string]any{}
				}
				reply["id"] = req.ID
				reply["ok"] = err == nil
				if err != nil {
					reply["error"] = err.Error()
				}
				o.write(reply)
			}()
		}
	}
	wg.Wait()
	close(stopCh)
	p.manager.Stop()
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kubelet-dra: "+format+"\n", args...)
	os.Exit(1)
}

// activePods are the pods the API server has bound to this node, as the
// kubelet's pod manager knows them (its pod source is a watch of the same):
// the DRA manager's reconcile loop, which runs at once on start and then
// every 60 s, unprepares the claims of any pod not among them. Should the
// list fail, the last one stands (an empty list would unprepare everything).
func (p *peer) activePods() []*v1.Pod {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := p.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + p.node})
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		klog.FromContext(ctx).Error(err, "Listing the node's pods failed, keeping the last list")
		return p.active
	}
	p.active = nil
	for i := range list.Items {
		pod := &list.Items[i]
		if pod.Status.Phase != v1.PodSucceeded && pod.Status.Phase != v1.PodFailed {
			p.active = append(p.active, pod)
		}
	}
	return p.active
}

// pod reads the Pod from the API server, or, once it is gone, the copy the
// kubelet last saw (a kubelet unprepares deleted pods from its own copy).
func (p *peer) pod(ctx context.Context, namespace, name string) (*v1.Pod, error) {
	pod, err := p.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if known := p.pods[namespace+"/"+name]; known != nil {
			return known, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return pod, nil
}

func (p *peer) handle(ctx context.Context, req request) (map[string]any, error) {
	switch req.Op {
	case "wait-driver":
		timeout := time.Duration(req.TimeoutS) * time.Second
		if timeout == 0 {
			timeout = 60 * time.Second
		}
		deadline := time.Now().Add(timeout)
		for {
			_, err := p.plugins.GetPlugin(req.Driver)
			if err == nil {
				return nil, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("after %v: %w", timeout, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	case "prepare":
		pod, err := p.pod(ctx, req.Namespace, req.Pod)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		p.pods[req.Namespace+"/"+req.Pod] = pod
		p.mu.Unlock()
		if err := p.manager.PrepareResources(ctx, pod); err != nil {
			return nil, err
		}
		return p.resources(pod)
	case "resources":
		pod, err := p.pod(ctx, req.Namespace, req.Pod)
		if err != nil {
			return nil, err
		}
		return p.resources(pod)
	case "health":
		pod, err := p.pod(ctx, req.Namespace, req.Pod)
		if err != nil {
			return nil, err
		}
		status := &v1.PodStatus{}
		for _, c := range pod.Spec.Containers {
			status.ContainerStatuses = append(status.ContainerStatuses, v1.ContainerStatus{Name: c.Name})
		}
		p.manager.UpdateAllocatedResourcesStatus(klog.FromContext(ctx), pod, status)
		if req.Write {
			if err := p.writeStatus(ctx, pod, status); err != nil {
				return nil, err
			}
		}
		containers := map[string]any{}
		for _, s := range status.ContainerStatuses {
			sort.Slice(s.AllocatedResourcesStatus, func(i, j int) bool {
				return s.AllocatedResourcesStatus[i].Name < s.AllocatedResourcesStatus[j].Name
			})
			containers[s.Name] = s.AllocatedResourcesStatus
		}
		return map[string]any{"containers": containers}, nil
	case "unprepare":
		pod, err := p.pod(ctx, req.Namespace, req.Pod)
		if err != nil {
			return nil, err
		}
		if err := p.manager.UnprepareResources(ctx, pod); err != nil {
			return nil, err
		}
		p.mu.Lock()
		delete(p.pods, req.Namespace+"/"+req.Pod)
		p.mu.Unlock()
		return nil, nil
	default:
		return nil, fmt.Errorf("unknown op %q", req.Op)
	}
}

// writeStatus writes each container's allocatedResourcesStatus into the
// Pod's status (UpdateStatus as this node). No container runs, so each
// status says Waiting, ContainerCreating, as a kubelet's would while it
// prepares the pod.
func (p *peer) writeStatus(ctx context.Context, pod *v1.Pod, computed *v1.PodStatus) error {
	current, err := p.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	statuses := make([]v1.ContainerStatus, 0, len(current.Spec.Containers))
	for _, c := range current.Spec.Containers {
		s := v1.ContainerStatus{
			Name:  c.Name,
			Image: c.Image,
			State: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}},
		}
		for _, cs := range computed.ContainerStatuses {
			if cs.Name == c.Name {
				s.AllocatedResourcesStatus = cs.AllocatedResourcesStatus
			}
		}
		statuses = append(statuses, s)
	}
	current.Status.ContainerStatuses = statuses
	if _, err := p.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, current, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// resources are the CDI device IDs GetResources gives each container: what
// the kubelet passes the runtime in the CRI's CDIDevices.
func (p *peer) resources(pod *v1.Pod) (map[string]any, error) {
	containers := map[string]any{}
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		info, err := p.manager.GetResources(pod, c)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
		ids := []string{}
		for _, d := range info.CDIDevices {
			ids = append(ids, d.Name)
		}
		containers[c.Name] = ids
	}
	return map[string]any{"containers": containers}, nil
}
