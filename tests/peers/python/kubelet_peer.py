#!/usr/bin/env python3
"""kubelet-peer: the kubelet's calls on the plugin sockets, spoken by Python grpcio.

grpcio is gRPC's C-core, an HTTP/2 client this project did not write (the
test kubelet in tests/src/kubelet.rs is tonic, as the host is). This program
runs the kubelet's flow against the real binary: registration (GetInfo with a
1 s deadline, NotifyRegistrationStatus with 5 s), then on the DRA socket
NodePrepareResources, the same again (after a kubelet restart it repeats
calls; the CDI IDs must not change), NodeUnprepareResources (45 s deadlines,
as the kubelet's defaultClientCallTimeout) and one message of the v1 health
stream.

--authority picks what the client sends as `:authority`:
  default          grpc.insecure_channel("unix:" + path) with no options: what
                   grpcio itself chooses for a unix: target;
  percent-encoded  grpc.default_authority forced to the socket path
                   percent-encoded as current grpc-go encodes the authority
                   of a bare-path target (what a kubelet built with it sends;
                   grpc-go before 1.57 sent the raw path instead).

Stubs are generated from proto/ with grpc_tools.protoc into a temporary
directory at every run. Output: one JSON object per line and step
({"client", "dial", "step", "ok", "error", ...}); it stops at the first
failed step and exits 1.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "proto")
PROTOS = [
    "pluginregistration.proto",
    "dra_v1.proto",
    "dra_health_v1.proto",
]
GET_INFO_TIMEOUT = 1.0
NOTIFY_TIMEOUT = 5.0
CALL_TIMEOUT = 45.0
HEALTH_WAIT = 20.0

CLIENT = "python grpcio " + grpc.__version__
# The --authority mode, named in every line.
AUTHORITY = "default"


class StepFailed(Exception):
    pass


def report(dial, step, error=None, **details):
    line = {"client": CLIENT, "authority": AUTHORITY, "dial": dial, "step": step, "ok": error is None}
    if error is not None:
        line["error"] = error
    line.update(details)
    print(json.dumps(line), flush=True)


def rpc_error(e):
    if isinstance(e, grpc.RpcError):
        return f"rpc error: code = {e.code().name} desc = {e.details()}"
    return f"{type(e).__name__}: {e}"


def grpc_go_authority(path):
    """The authority current grpc-go derives from a bare-path target: every
    byte percent-encoded except RFC 3986 unreserved characters, sub-delims
    and ':', '@', '[', ']' (grpc-go clientconn.go, encodeAuthority). A socket
    path's '/' becomes %2F."""
    keep = set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        "-_.~" "!$&'()*+,;=" ":[]@"
    )
    return "".join(chr(b) if chr(b) in keep else f"%{b:02X}" for b in path.encode())


def channel(path, authority):
    options = []
    if authority == "percent-encoded":
        options.append(("grpc.default_authority", grpc_go_authority(path)))
    return grpc.insecure_channel("unix:" + path, options=options)


def generate_stubs(out):
    args = ["grpc_tools.protoc", "-I", PROTO_DIR, f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + PROTOS) != 0:
        raise SystemExit(f"grpc_tools.protoc failed on {PROTOS} in {PROTO_DIR}")
    sys.path.insert(0, out)
    return {name: importlib.import_module(name) for name in (
        "pluginregistration_pb2", "pluginregistration_pb2_grpc",
        "dra_v1_pb2", "dra_v1_pb2_grpc",
        "dra_health_v1_pb2", "dra_health_v1_pb2_grpc",
    )}


def call(dial, step, fn):
    try:
        return fn()
    except grpc.RpcError as e:
        report(dial, step, rpc_error(e))
        raise StepFailed() from e


def register(pb, socket, authority):
    dial = "registration"
    reg = pb["pluginregistration_pb2"]
    with channel(socket, authority) as ch:
        stub = pb["pluginregistration_pb2_grpc"].RegistrationStub(ch)
        info = call(dial, "GetInfo", lambda: stub.GetInfo(reg.InfoRequest(), timeout=GET_INFO_TIMEOUT))
        report(dial, "GetInfo", type=info.type, name=info.name, endpoint=info.endpoint,
               supported_versions=list(info.supported_versions))
        status = reg.RegistrationStatus(plugin_registered=True)
        call(dial, "NotifyRegistrationStatus",
             lambda: stub.NotifyRegistrationStatus(status, timeout=NOTIFY_TIMEOUT))
        report(dial, "NotifyRegistrationStatus")
    return info.endpoint or socket


def run_dra(pb, endpoint, authority, namespace, name, uid):
    dial = "dra"
    dra = pb["dra_v1_pb2"]
    health = pb["dra_health_v1_pb2"]
    claims = [dra.Claim(namespace=namespace, name=name, uid=uid)]
    with channel(endpoint, authority) as ch:
        stub = pb["dra_v1_pb2_grpc"].DRAPluginStub(ch)

        def prepare(step):
            resp = call(dial, step, lambda: stub.NodePrepareResources(
                dra.NodePrepareResourcesRequest(claims=claims), timeout=CALL_TIMEOUT))
            if uid not in resp.claims:
                report(dial, step, f"no answer entry for claim {uid}")
                raise StepFailed()
            entry = resp.claims[uid]
            if entry.error:
                report(dial, step, f"claim {uid}: {entry.error}")
                raise StepFailed()
            ids = [i for d in entry.devices for i in d.cdi_device_ids]
            report(dial, step, cdi_device_ids=ids)
            return ids

        first = prepare("v1.NodePrepareResources")
        again = prepare("v1.NodePrepareResources (repeated)")
        if sorted(first) != sorted(again):
            report(dial, "v1.NodePrepareResources (repeated)",
                   f"repeated prepare answered {again}, the first {first}")
            raise StepFailed()

        step = "v1.NodeUnprepareResources"
        resp = call(dial, step, lambda: stub.NodeUnprepareResources(
            dra.NodeUnprepareResourcesRequest(claims=claims), timeout=CALL_TIMEOUT))
        if uid not in resp.claims:
            report(dial, step, f"no answer entry for claim {uid}")
            raise StepFailed()
        if resp.claims[uid].error:
            report(dial, step, f"claim {uid}: {resp.claims[uid].error}")
            raise StepFailed()
        report(dial, step)

        step = "v1.NodeWatchResources"
        watch = pb["dra_health_v1_pb2_grpc"].DRAResourceHealthStub(ch).NodeWatchResources(
            health.NodeWatchResourcesRequest(), timeout=HEALTH_WAIT)
        try:
            first_msg = call(dial, step, lambda: next(watch))
        except StopIteration:
            report(dial, step, "the stream ended before its first message")
            raise StepFailed()
        finally:
            watch.cancel()
        report(dial, step, devices=len(first_msg.devices))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registration", required=True, help="the plugin's registration socket")
    p.add_argument("--authority", choices=["default", "percent-encoded"], default="default")
    p.add_argument("--claim", required=True, help="the claim to prepare: namespace/name/uid")
    args = p.parse_args()
    global AUTHORITY
    AUTHORITY = args.authority
    parts = args.claim.split("/")
    if len(parts) != 3:
        p.error(f"--claim {args.claim!r}: want namespace/name/uid")

    with tempfile.TemporaryDirectory(prefix="kubelet-peer-stubs-") as out:
        pb = generate_stubs(out)
        try:
            endpoint = register(pb, args.registration, args.authority)
            run_dra(pb, endpoint, args.authority, *parts)
        except StepFailed:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
