// Command metadata-decode is a workload's view of a KEP-5304 device metadata
// file: it decodes the file with k8s.io/dynamic-resource-allocation's
// devicemetadata package (the code a workload or a consumer library uses,
// v0.37.2), into the internal DeviceMetadata type as the package's
// ReadResourceClaimMetadata functions do, with the package's validation of
// the version it decoded.
//
// It then encodes the decoded object again, once per API version found in the
// stream and in the stream's order, with the encoder the kubeletplugin helper
// writes these files with (the metadata scheme's pretty JSON serializer, one
// object per version, each followed by a newline), and says whether that
// gives the file's exact bytes: whether the file is what the Go helper itself
// would have written for the same content.
//
// It prints one JSON object on standard output:
//
//	{"decodedVersion": "metadata.resource.k8s.io/v1beta1",
//	 "validationError": "",
//	 "streamVersions": ["metadata.resource.k8s.io/v1beta1", ...],
//	 "reencodedIdentical": true,
//	 "decoded": {...}}
//
// where "decoded" is the internal object as encoding/json writes it (Go field
// names for the metadata types' own fields). A file the package cannot decode
// ends the program with status 1 and the package's message on standard error.
//
// Usage:
//
//	metadata-decode FILE
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	runtimeserializer "k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/dynamic-resource-allocation/api/metadata"
	"k8s.io/dynamic-resource-allocation/api/metadata/install"
	"k8s.io/dynamic-resource-allocation/devicemetadata"
)

type report struct {
	DecodedVersion     string                   `json:"decodedVersion"`
	ValidationError    string                   `json:"validationError"`
	StreamVersions     []string                 `json:"streamVersions"`
	ReencodedIdentical bool                     `json:"reencodedIdentical"`
	Decoded            *metadata.DeviceMetadata `json:"decoded"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: metadata-decode FILE")
		os.Exit(2)
	}
	r, err := decode(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "metadata-decode: %v\n", err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(r); err != nil {
		fmt.Fprintf(os.Stderr, "metadata-decode: writing the report: %v\n", err)
		os.Exit(1)
	}
}

func decode(path string) (*report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var dm metadata.DeviceMetadata
	var gvk schema.GroupVersionKind
	var validation error
	err = devicemetadata.DecodeMetadataFromStream(
		json.NewDecoder(bytes.NewReader(data)), &dm,
		devicemetadata.DecodeMetadataStoreGVKResult(&gvk),
		devicemetadata.DecodeMetadataWithValidationResult(&validation),
	)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r := &report{DecodedVersion: gvk.GroupVersion().String(), Decoded: &dm}
	if validation != nil {
		r.ValidationError = validation.Error()
	}

	// The versions in the stream, in order.
	var versions []schema.GroupVersion
	stream := json.NewDecoder(bytes.NewReader(data))
	for stream.More() {
		var meta struct {
			APIVersion string `json:"apiVersion"`
		}
		if err := stream.Decode(&meta); err != nil {
			return nil, fmt.Errorf("%s: reading the stream: %w", path, err)
		}
		gv, err := schema.ParseGroupVersion(meta.APIVersion)
		if err != nil {
			return nil, fmt.Errorf("%s: apiVersion %q: %w", path, meta.APIVersion, err)
		}
		versions = append(versions, gv)
		r.StreamVersions = append(r.StreamVersions, gv.String())
	}

	// Encoded again as the kubeletplugin helper encodes its metadata stream.
	scheme := install.NewScheme()
	codecs := runtimeserializer.NewCodecFactory(scheme)
	info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
	if !ok {
		return nil, fmt.Errorf("no JSON serializer for the metadata scheme")
	}
	var again bytes.Buffer
	for _, gv := range versions {
		obj := dm.DeepCopy()
		encoded, err := runtime.Encode(codecs.EncoderForVersion(info.PrettySerializer, gv), obj)
		if err != nil {
			return nil, fmt.Errorf("encoding %s again: %w", gv, err)
		}
		again.Write(encoded)
		again.WriteByte('\n')
	}
	r.ReencodedIdentical = bytes.Equal(again.Bytes(), data)
	return r, nil
}
