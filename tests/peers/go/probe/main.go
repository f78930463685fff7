// authority-probe: a gRPC-shaped HTTP/2 server on a Unix socket that answers
// every call with UNIMPLEMENTED and prints what the client sent.
//
// The kubelet peers' tests rest on what each client puts in `:authority`
// (the raw socket path, its percent-encoded form, "localhost", ...). This
// probe, built on golang.org/x/net/http2 (at the version k8s.io/kubernetes
// v1.37.2 requires; see ../go.mod), records it as the bytes arrive, before
// any server could judge them, so a test can check each client sends what it
// is meant to reproduce.
//
// Usage: authority-probe SOCKET. Prints one JSON line per request:
// {"path": ..., "authority": ..., "has_authority": bool}, and "listening"
// on stderr once the socket accepts connections.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

var out sync.Mutex

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: authority-probe SOCKET")
		os.Exit(2)
	}
	os.Remove(os.Args[1])
	l, err := net.Listen("unix", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "listening")
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fr := http2.NewFramer(c, c)
	// HEADERS and its CONTINUATIONs arrive as one MetaHeadersFrame.
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		return
	}
	// One encoder per connection: the client keeps one HPACK table per connection.
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			line := map[string]interface{}{"has_authority": false}
			for _, h := range f.Fields {
				switch h.Name {
				case ":path":
					line["path"] = h.Value
				case ":authority":
					line["authority"], line["has_authority"] = h.Value, true
				}
			}
			b, _ := json.Marshal(line)
			out.Lock()
			fmt.Println(string(b))
			out.Unlock()
			// A trailers-only gRPC answer: UNIMPLEMENTED, so the client
			// stops here without retrying.
			block.Reset()
			for _, kv := range [][2]string{{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "12"}, {"grpc-message", "authority-probe"}} {
				enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
		}
	}
}
