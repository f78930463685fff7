// Command cdi-inject is the container runtime's view of a CDI directory: it
// resolves fully-qualified CDI device IDs with
// tags.cncf.io/container-device-interface, the library containerd 2.x and
// CRI-O use, and injects them into a minimal OCI runtime spec the way
// containerd's CRI plugin does (the package's default cache configured with
// the spec directories and auto-refresh off, Refresh, then InjectDevices). It
// prints the resulting OCI spec as JSON on standard output.
//
// containerd only logs a failed refresh, because one vendor's broken spec must
// not stop another vendor's devices. Here every complaint is fatal: a spec file
// the library refuses (refresh or per-spec errors), a file in a spec directory
// it does not load at all, a device ID it cannot resolve, or an edit it cannot
// apply, each ends the program with status 1 and a message on standard error
// that names the file or the device.
//
// Usage:
//
//	cdi-inject [-uid N -gid N] -spec-dir DIR [-spec-dir DIR...] ID...
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// dirs collects repeated -spec-dir flags, in priority order (last wins).
type dirs []string

func (d *dirs) String() string     { return strings.Join(*d, ",") }
func (d *dirs) Set(v string) error { *d = append(*d, v); return nil }

func main() {
	var specDirs dirs
	flag.Var(&specDirs, "spec-dir", "a CDI spec directory (repeatable; later ones take precedence)")
	uid := flag.Uint("uid", 0, "the container process's user ID (device nodes inherit it)")
	gid := flag.Uint("gid", 0, "the container process's group ID")
	flag.Parse()
	if len(specDirs) == 0 || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: cdi-inject [-uid N -gid N] -spec-dir DIR [-spec-dir DIR...] VENDOR/CLASS=DEVICE...")
		os.Exit(2)
	}
	spec, err := inject(specDirs, uint32(*uid), uint32(*gid), flag.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "cdi-inject: %v\n", err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(spec); err != nil {
		fmt.Fprintf(os.Stderr, "cdi-inject: writing the OCI spec: %v\n", err)
		os.Exit(1)
	}
}

func inject(specDirs []string, uid, gid uint32, devices []string) (*oci.Spec, error) {
	// As containerd's CRI plugin configures the package's default cache.
	if err := cdi.Configure(cdi.WithSpecDirs(specDirs...), cdi.WithAutoRefresh(false)); err != nil {
		return nil, fmt.Errorf("configuring the CDI cache: %w", err)
	}
	refreshErr := cdi.Refresh()
	cache := cdi.GetDefaultCache()

	var problems []string
	if refreshErr != nil {
		problems = append(problems, fmt.Sprintf("refresh: %v", refreshErr))
	}
	for path, errs := range cdi.GetErrors() {
		for _, e := range errs {
			problems = append(problems, fmt.Sprintf("spec %s refused: %v", path, e))
		}
	}
	for dir, e := range cache.GetSpecDirErrors() {
		if e != nil {
			problems = append(problems, fmt.Sprintf("spec directory %s: %v", dir, e))
		}
	}
	ignored, err := unloaded(cache, specDirs)
	if err != nil {
		return nil, err
	}
	for _, path := range ignored {
		problems = append(problems, fmt.Sprintf("file %s in a spec directory was not loaded as a CDI spec", path))
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return nil, errors.New(strings.Join(problems, "\n"))
	}

	spec := minimalSpec(uid, gid)
	unresolved, err := cdi.InjectDevices(spec, devices...)
	if err != nil {
		return nil, fmt.Errorf("CDI device injection failed (unresolved: %v): %w", unresolved, err)
	}
	return spec, nil
}

// unloaded lists the regular files of the spec directories that the cache
// holds no spec for: files the library skipped without a word (a name it does
// not read as a spec, such as a temporary file left behind).
func unloaded(cache *cdi.Cache, specDirs []string) ([]string, error) {
	loaded := map[string]bool{}
	for _, vendor := range cache.ListVendors() {
		for _, s := range cache.GetVendorSpecs(vendor) {
			loaded[s.GetPath()] = true
		}
	}
	var out []string
	for _, dir := range specDirs {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading spec directory %s: %w", dir, err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			path := filepath.Join(dir, e.Name())
			if !loaded[path] {
				out = append(out, path)
			}
		}
	}
	return out, nil
}

// minimalSpec is the skeleton of a Linux container's OCI runtime spec before
// devices are injected: one process, the usual mounts and namespaces, and the
// device cgroup's deny-all rule a runtime starts from.
func minimalSpec(uid, gid uint32) *oci.Spec {
	return &oci.Spec{
		Version: oci.Version,
		Process: &oci.Process{
			User: oci.User{UID: uid, GID: gid},
			Args: []string{"/bin/sh"},
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cwd:  "/",
		},
		Root:     &oci.Root{Path: "rootfs"},
		Hostname: "pod",
		Mounts: []oci.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		},
		Linux: &oci.Linux{
			Namespaces: []oci.LinuxNamespace{
				{Type: oci.PIDNamespace}, {Type: oci.IPCNamespace}, {Type: oci.UTSNamespace},
				{Type: oci.MountNamespace}, {Type: oci.NetworkNamespace},
			},
			Resources: &oci.LinuxResources{
				Devices: []oci.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}
}
