// kubelet-peer: the kubelet's side of the plugin wire, spoken by grpc-go.
//
// The project's own test kubelet (tests/src/kubelet.rs) is a tonic client and
// always sends a well-formed `:authority`; the real kubelet is grpc-go and
// does not. This program dials the host's sockets the way the kubelet's
// source does and runs the calls a kubelet makes, so that the end-to-end
// tests (tests/e2e/kubelet_clients.rs) can run a peer this project did not
// write against the real binary.
//
// It is a Go module (go.mod) built with the grpc-go and protobuf-go versions
// k8s.io/kubernetes v1.37.2 requires (grpc-go 1.82.1), against the kubelet's
// own generated stubs (k8s.io/kubelet v0.37.2, pkg/apis/...): what a 1.37
// kubelet is compiled from. build.sh builds it.
//
// Output: one JSON object per line and step, {"client", "dial", "step", "ok",
// "error", ...details}; it stops at the first failed step and exits 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	healthv1 "k8s.io/kubelet/pkg/apis/dra-health/v1"
	healthv1alpha1 "k8s.io/kubelet/pkg/apis/dra-health/v1alpha1"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	drav1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const (
	// pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go
	dialTimeout    = 10 * time.Second // dialTimeoutDuration
	getInfoTimeout = time.Second      // context.WithTimeout(..., time.Second) around GetInfo
	notifyTimeout  = 5 * time.Second  // notifyTimeoutDuration
	// pkg/kubelet/cm/dra/plugin: defaultClientCallTimeout, per Prepare/Unprepare call.
	callTimeout = 45 * time.Second
	// How long to wait for the first health message (the kubelet's stream
	// has no deadline; a test must not hang).
	healthWait = 20 * time.Second
)

// client names this peer in every line: which library, which version.
var client = "grpc-go " + grpc.Version

// report prints one step as a JSON line.
func report(dial, step string, err error, details map[string]interface{}) {
	line := map[string]interface{}{"client": client, "dial": dial, "step": step, "ok": err == nil}
	if authorityOption != "" {
		line["authority"] = authorityOption
	}
	if err != nil {
		line["error"] = err.Error()
	}
	for k, v := range details {
		line[k] = v
	}
	b, _ := json.Marshal(line)
	fmt.Println(string(b))
}

// fail reports a failed step and ends the program.
func fail(dial, step string, err error) {
	report(dial, step, err, nil)
	os.Exit(1)
}

func unixDialer(ctx context.Context, addr string) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "unix", addr)
}

// authorityOption is what -authority asks for on a bare-path dial: nothing
// (this grpc-go's own choice: the socket path percent-encoded, as every
// grpc-go since 1.57 sends it, clientconn.go, grpc-go #6428), or "raw": the
// path as it is, what grpc-go < 1.57 sent (kubelets up to 1.28, none that
// this host supports), forced with WithAuthority, which grpc-go sends
// unchanged. It keeps a real client sending an authority that hyper's h2
// refuses outright ('/' is not allowed in an authority).
var authorityOption string

func authorityFor(target string) []grpc.DialOption {
	if authorityOption != "raw" {
		return nil
	}
	return []grpc.DialOption{grpc.WithAuthority(target)}
}

// registerPlugin is the plugin watcher's registration of one socket, as in
// pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go, whose
// dial() is
//
//	grpc.DialContext(ctx, unixSocketPath, <insecure credentials>, grpc.WithBlock(),
//	    grpc.WithContextDialer(func(ctx, addr) { (&net.Dialer{}).DialContext(ctx, "unix", addr) }))
//
// with a 10 s dial timeout and no WithAuthority in any release (older ones
// spell the credentials grpc.WithInsecure(), newer ones
// insecure.NewCredentials(); the bytes sent are the same). The target is a
// bare path, so grpc-go's passthrough resolver (Dial's default scheme) makes
// the path the channel's authority, percent-encoded. Then GetInfo (1 s),
// then NotifyRegistrationStatus (5 s).
func registerPlugin(socket string) *registerapi.PluginInfo {
	const dial = "plugin-watcher"
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithBlock(), grpc.WithContextDialer(unixDialer)},
		authorityFor(socket)...)
	conn, err := grpc.DialContext(ctx, socket, opts...) //nolint:staticcheck // the kubelet's own (deprecated) call
	if err != nil {
		fail(dial, "Dial", fmt.Errorf("failed to dial socket %s, err: %v", socket, err))
	}
	defer conn.Close()
	reg := registerapi.NewRegistrationClient(conn)

	ctx, cancel = context.WithTimeout(context.Background(), getInfoTimeout)
	defer cancel()
	info, err := reg.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		fail(dial, "GetInfo", err)
	}
	report(dial, "GetInfo", nil, map[string]interface{}{
		"type": info.Type, "name": info.Name, "endpoint": info.Endpoint, "supported_versions": info.SupportedVersions,
	})
	if info.Endpoint == "" {
		info.Endpoint = socket // as the kubelet does
	}

	ctx, cancel = context.WithTimeout(context.Background(), notifyTimeout)
	defer cancel()
	if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		fail(dial, "NotifyRegistrationStatus", err)
	}
	report(dial, "NotifyRegistrationStatus", nil, nil)
	return info
}

// dialPre134 is the DRA dial of kubelets 1.31 to 1.33
// (pkg/kubelet/cm/dra/plugin/plugin.go, Plugin.getOrCreateGRPCConn):
// grpc.Dial(p.endpoint, insecure credentials, WithContextDialer(unix)) (1.32
// and 1.33 add a client-side metrics interceptor, which sends nothing), then
// WaitForStateChange(1 s, Connecting). A bare path again: the channel's
// authority is the socket path, percent-encoded.
func dialPre134(endpoint string) (*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(unixDialer)},
		authorityFor(endpoint)...)
	conn, err := grpc.Dial(endpoint, opts...) //nolint:staticcheck // the kubelet's own (deprecated) call
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if ok := conn.WaitForStateChange(ctx, connectivity.Connecting); !ok {
		conn.Close()
		return nil, errors.New("timed out waiting for gRPC connection to be ready")
	}
	return conn, nil
}

// dialNewClient is the DRA dial of kubelets 1.34+
// (pkg/kubelet/cm/dra/plugin/dra_plugin_manager.go, DRAPluginManager.add):
//
//	grpc.NewClient("unix:"+endpoint, insecure credentials, a metrics interceptor, a stats handler)
//	conn.Connect()
//
// The interceptor and the stats handler send nothing. grpc-go's unix
// resolver names the channel's authority "localhost".
func dialNewClient(endpoint string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix:"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	conn.Connect()
	return conn, nil
}

type claim struct{ namespace, name, uid string }

func parseClaim(s string) (claim, error) {
	p := strings.Split(s, "/")
	if len(p) != 3 {
		return claim{}, fmt.Errorf("-claim %q: want namespace/name/uid", s)
	}
	return claim{p[0], p[1], p[2]}, nil
}

// prepared is one claim's answer, in terms common to v1 and v1beta1.
type prepared struct {
	err    string
	cdiIDs []string
	found  bool
}

// draCalls is NodePrepareResources/NodeUnprepareResources through the
// service the kubelet picked.
type draCalls struct {
	v1      drav1.DRAPluginClient
	v1beta1 drav1beta1.DRAPluginClient
}

func (d draCalls) prepare(c claim) (prepared, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var out prepared
	if d.v1 != nil {
		resp, err := d.v1.NodePrepareResources(ctx, &drav1.NodePrepareResourcesRequest{
			Claims: []*drav1.Claim{{Namespace: c.namespace, Name: c.name, Uid: c.uid}},
		})
		if err != nil {
			return out, err
		}
		if r, ok := resp.Claims[c.uid]; ok {
			out.found, out.err = true, r.Error
			for _, dev := range r.Devices {
				out.cdiIDs = append(out.cdiIDs, dev.CdiDeviceIds...)
			}
		}
		return out, nil
	}
	resp, err := d.v1beta1.NodePrepareResources(ctx, &drav1beta1.NodePrepareResourcesRequest{
		Claims: []*drav1beta1.Claim{{Namespace: c.namespace, Name: c.name, Uid: c.uid}},
	})
	if err != nil {
		return out, err
	}
	if r, ok := resp.Claims[c.uid]; ok {
		out.found, out.err = true, r.Error
		for _, dev := range r.Devices {
			out.cdiIDs = append(out.cdiIDs, dev.CdiDeviceIds...)
		}
	}
	return out, nil
}

func (d draCalls) unprepare(c claim) (string, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if d.v1 != nil {
		resp, err := d.v1.NodeUnprepareResources(ctx, &drav1.NodeUnprepareResourcesRequest{
			Claims: []*drav1.Claim{{Namespace: c.namespace, Name: c.name, Uid: c.uid}},
		})
		if err != nil {
			return "", false, err
		}
		r, ok := resp.Claims[c.uid]
		if !ok {
			return "", false, nil
		}
		return r.Error, true, nil
	}
	resp, err := d.v1beta1.NodeUnprepareResources(ctx, &drav1beta1.NodeUnprepareResourcesRequest{
		Claims: []*drav1beta1.Claim{{Namespace: c.namespace, Name: c.name, Uid: c.uid}},
	})
	if err != nil {
		return "", false, err
	}
	r, ok := resp.Claims[c.uid]
	if !ok {
		return "", false, nil
	}
	return r.Error, true, nil
}

// firstHealth opens NodeWatchResources and reads one message: the number of
// devices it lists.
func firstHealth(conn *grpc.ClientConn, service string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), healthWait)
	defer cancel()
	if service == "v1" {
		stream, err := healthv1.NewDRAResourceHealthClient(conn).NodeWatchResources(ctx, &healthv1.NodeWatchResourcesRequest{})
		if err != nil {
			return 0, err
		}
		msg, err := stream.Recv()
		if err == io.EOF {
			return 0, errors.New("the stream ended before its first message")
		}
		if err != nil {
			return 0, err
		}
		return len(msg.Devices), nil
	}
	stream, err := healthv1alpha1.NewDRAResourceHealthClient(conn).NodeWatchResources(ctx, &healthv1alpha1.NodeWatchResourcesRequest{})
	if err != nil {
		return 0, err
	}
	msg, err := stream.Recv()
	if err == io.EOF {
		return 0, errors.New("the stream ended before its first message")
	}
	if err != nil {
		return 0, err
	}
	return len(msg.Devices), nil
}

func sameIDs(a, b []string) bool {
	a, b = append([]string(nil), a...), append([]string(nil), b...)
	sort.Strings(a)
	sort.Strings(b)
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// dialDRA dials the DRA socket as the kubelet named by dial does.
func dialDRA(dial, endpoint string) *grpc.ClientConn {
	var conn *grpc.ClientConn
	var err error
	switch dial {
	case "pre-1.34":
		conn, err = dialPre134(endpoint)
	case "new-client":
		if authorityOption != "" {
			err = errors.New("-authority applies to bare-path dials only (registration, pre-1.34)")
		} else {
			conn, err = dialNewClient(endpoint)
		}
	default:
		err = fmt.Errorf("unknown -dial %q (pre-1.34, new-client)", dial)
	}
	if err != nil {
		fail(dial, "Dial", err)
	}
	return conn
}

// runBatch is one v1.NodePrepareResources call for all of a pod's claims,
// as the kubelet makes it, with grpc-go's default receive limit (4 MiB):
// the answer for each claim, or the call's gRPC error.
func runBatch(dial, endpoint string, claims []claim) {
	conn := dialDRA(dial, endpoint)
	defer conn.Close()
	report(dial, "Dial", nil, map[string]interface{}{"endpoint": endpoint, "target": conn.Target()})
	var req drav1.NodePrepareResourcesRequest
	for _, c := range claims {
		req.Claims = append(req.Claims, &drav1.Claim{Namespace: c.namespace, Name: c.name, Uid: c.uid})
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	step := "v1.NodePrepareResources (batch)"
	resp, err := drav1.NewDRAPluginClient(conn).NodePrepareResources(ctx, &req)
	if err != nil {
		fail(dial, step, err)
	}
	answers := []map[string]interface{}{}
	for _, c := range claims {
		r, ok := resp.Claims[c.uid]
		if !ok {
			fail(dial, step, fmt.Errorf("no answer entry for claim %s", c.uid))
		}
		head := r.Error
		if len(head) > 120 {
			head = head[:120]
		}
		answers = append(answers, map[string]interface{}{
			"uid": c.uid, "error_bytes": len(r.Error), "error_head": head, "devices": len(r.Devices),
		})
	}
	report(dial, step, nil, map[string]interface{}{"answers": answers, "bytes": proto.Size(resp)})
}

// runDRA is what the kubelet does on the DRA socket for one pod's claim:
// prepare, prepare again (after a kubelet restart; must answer the same CDI
// IDs), unprepare, and the health stream it keeps open.
func runDRA(dial, endpoint, service, health string, c claim) {
	conn := dialDRA(dial, endpoint)
	defer conn.Close()
	report(dial, "Dial", nil, map[string]interface{}{"endpoint": endpoint, "target": conn.Target()})

	var calls draCalls
	switch service {
	case "v1":
		calls.v1 = drav1.NewDRAPluginClient(conn)
	case "v1beta1":
		calls.v1beta1 = drav1beta1.NewDRAPluginClient(conn)
	default:
		fail(dial, "NodePrepareResources", fmt.Errorf("unknown -service %q (v1, v1beta1)", service))
	}
	step := service + ".NodePrepareResources"

	first, err := calls.prepare(c)
	if err == nil && !first.found {
		err = fmt.Errorf("no answer entry for claim %s", c.uid)
	} else if err == nil && first.err != "" {
		err = fmt.Errorf("claim %s: %s", c.uid, first.err)
	}
	if err != nil {
		fail(dial, step, err)
	}
	report(dial, step, nil, map[string]interface{}{"cdi_device_ids": first.cdiIDs})

	again, err := calls.prepare(c)
	if err == nil && (!again.found || again.err != "") {
		err = fmt.Errorf("claim %s: found %v, error %q", c.uid, again.found, again.err)
	} else if err == nil && !sameIDs(first.cdiIDs, again.cdiIDs) {
		err = fmt.Errorf("repeated prepare answered %v, the first %v", again.cdiIDs, first.cdiIDs)
	}
	if err != nil {
		fail(dial, step+" (repeated)", err)
	}
	report(dial, step+" (repeated)", nil, map[string]interface{}{"cdi_device_ids": again.cdiIDs})

	ustep := service + ".NodeUnprepareResources"
	claimErr, found, err := calls.unprepare(c)
	if err == nil && !found {
		err = fmt.Errorf("no answer entry for claim %s", c.uid)
	} else if err == nil && claimErr != "" {
		err = fmt.Errorf("claim %s: %s", c.uid, claimErr)
	}
	if err != nil {
		fail(dial, ustep, err)
	}
	report(dial, ustep, nil, nil)

	hstep := health + ".NodeWatchResources"
	devices, err := firstHealth(conn, health)
	if err != nil {
		fail(dial, hstep, err)
	}
	report(dial, hstep, nil, map[string]interface{}{"devices": devices})
}

// runLoad is the kubelet's load on a DRA socket for a benchmark
// (tests/bench/peers.rs): `callers` connections, each dialed as the kubelet
// dials (grpc.NewClient, the v1 service), each looping v1 prepare, then
// unprepare, of one claim at a time over its share of `claims`, for
// `seconds`; a prepare that answers no CDI device ID fails it. One JSON
// line: pairs, seconds, and every call's latency in microseconds.
func runLoad(endpoint string, callers int, seconds float64, claims []claim) {
	if callers < 1 || len(claims) < callers {
		fail("new-client", "load", fmt.Errorf("-load %d with %d claims", callers, len(claims)))
	}
	per := (len(claims) + callers - 1) / callers
	type result struct {
		prepare, unprepare []int64
		err                error
	}
	var conns []*grpc.ClientConn
	var shares [][]claim
	for start := 0; start < len(claims); start += per {
		conn, err := dialNewClient(endpoint)
		if err != nil {
			fail("new-client", "Dial", err)
		}
		defer conn.Close()
		conns = append(conns, conn)
		shares = append(shares, claims[start:min(start+per, len(claims))])
	}
	results := make(chan result, len(conns))
	started := time.Now()
	deadline := started.Add(time.Duration(seconds * float64(time.Second)))
	for i, conn := range conns {
		go func(calls draCalls, share []claim) {
			var r result
			for time.Now().Before(deadline) && r.err == nil {
				for _, c := range share {
					if !time.Now().Before(deadline) {
						break
					}
					t := time.Now()
					p, err := calls.prepare(c)
					if err == nil && (!p.found || p.err != "" || len(p.cdiIDs) == 0) {
						err = fmt.Errorf("prepare %s: found %v, error %q, CDI IDs %v", c.uid, p.found, p.err, p.cdiIDs)
					}
					if err != nil {
						r.err = err
						break
					}
					r.prepare = append(r.prepare, time.Since(t).Microseconds())
					t = time.Now()
					claimErr, found, err := calls.unprepare(c)
					if err == nil && (!found || claimErr != "") {
						err = fmt.Errorf("unprepare %s: found %v, error %q", c.uid, found, claimErr)
					}
					if err != nil {
						r.err = err
						break
					}
					r.unprepare = append(r.unprepare, time.Since(t).Microseconds())
				}
			}
			results <- r
		}(draCalls{v1: drav1.NewDRAPluginClient(conn)}, shares[i])
	}
	prepare, unprepare := []int64{}, []int64{}
	for range conns {
		r := <-results
		if r.err != nil {
			fail("new-client", "load", r.err)
		}
		prepare = append(prepare, r.prepare...)
		unprepare = append(unprepare, r.unprepare...)
	}
	elapsed := time.Since(started).Seconds()
	report("new-client", "load", nil, map[string]interface{}{
		"callers": len(conns), "pairs": len(unprepare), "seconds": elapsed,
		"prepare_us": prepare, "unprepare_us": unprepare,
	})
}

func main() {
	registration := flag.String("registration", "", "registration socket: register as the plugin watcher does")
	dial := flag.String("dial", "", "DRA dial to run: pre-1.34 or new-client (none: registration only)")
	flag.StringVar(&authorityOption, "authority", "", "bare-path dials: empty (grpc-go's own choice, the percent-encoded path) or raw (what grpc-go < 1.57 sent)")
	endpoint := flag.String("endpoint", "", "DRA socket (default: the endpoint GetInfo answered)")
	service := flag.String("service", "v1", "DRAPlugin service: v1 or v1beta1")
	health := flag.String("health", "v1", "DRAResourceHealth service: v1 or v1alpha1")
	claimArg := flag.String("claim", "", "the claim to prepare: namespace/name/uid")
	batchArg := flag.String("batch", "", "instead: one v1 prepare of these claims, namespace/name/uid,...")
	loadArg := flag.Int("load", 0, "instead: this many callers loop v1 prepare + unprepare over -batch's claims (with -endpoint)")
	seconds := flag.Float64("seconds", 5, "with -load: for how long")
	flag.Parse()
	if authorityOption != "" && authorityOption != "raw" {
		fail(*dial, "arguments", fmt.Errorf("unknown -authority %q (raw)", authorityOption))
	}

	if *registration != "" {
		info := registerPlugin(*registration)
		if *endpoint == "" {
			*endpoint = info.Endpoint
		}
	}
	if *dial == "" {
		return
	}
	if *batchArg != "" {
		var claims []claim
		for _, a := range strings.Split(*batchArg, ",") {
			c, err := parseClaim(a)
			if err != nil {
				fail(*dial, "arguments", err)
			}
			claims = append(claims, c)
		}
		if *endpoint == "" {
			fail(*dial, "arguments", errors.New("no -endpoint and no -registration to learn it from"))
		}
		if *loadArg > 0 {
			runLoad(*endpoint, *loadArg, *seconds, claims)
			return
		}
		runBatch(*dial, *endpoint, claims)
		return
	}
	c, err := parseClaim(*claimArg)
	if err != nil {
		fail(*dial, "arguments", err)
	}
	if *endpoint == "" {
		fail(*dial, "arguments", errors.New("no -endpoint and no -registration to learn it from"))
	}
	runDRA(*dial, *endpoint, *service, *health, c)
}
