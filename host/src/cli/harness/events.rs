//! `guest run events`: the events given on the command line (`xid=GPU:XID`,
//! `ecc=GPU`, `link=NAME:up|down`), parsed.

use super::*;

/// An event from the command line.
#[derive(Debug, PartialEq)]
pub(super) enum Injected {
    Gpu {
        gpu: String,
        kind: model::GpuEventKind,
        data: u64,
    },
    Link {
        name: String,
        up: bool,
    },
}

pub(super) fn parse_event(text: &str) -> Result<Injected> {
    let bad = |why: &str| anyhow!("event {text:?}: {why} (xid=GPU:XID, ecc=GPU, link=NAME:up|down)");
    let (kind, value) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
    match kind {
        "xid" => {
            let (gpu, xid) = value
                .split_once(':')
                .ok_or_else(|| bad("no ':' between the GPU and the Xid"))?;
            let xid = xid
                .parse()
                .map_err(|_| bad(&format!("the Xid {xid:?} is not a number")))?;
            if gpu.is_empty() {
                return Err(bad("no GPU"));
            }
            Ok(Injected::Gpu {
                gpu: gpu.to_owned(),
                kind: model::GpuEventKind::XidCriticalError,
                data: xid,
            })
        }
        "ecc" if !value.is_empty() => Ok(Injected::Gpu {
            gpu: value.to_owned(),
            kind: model::GpuEventKind::DoubleBitEccError,
            data: 0,
        }),
        "ecc" => Err(bad("no GPU")),
        "link" => {
            let (name, state) = value.rsplit_once(':').ok_or_else(|| bad("no ':' before up or down"))?;
            let up = match state {
                "up" => true,
                "down" => false,
                other => return Err(bad(&format!("the state {other:?} is not up or down"))),
            };
            if !dra_wasm_host::imports::net::is_valid_ifname(name) {
                return Err(bad(&format!("{name:?} is not an interface name")));
            }
            Ok(Injected::Link {
                name: name.to_owned(),
                up,
            })
        }
        other => Err(bad(&format!("unknown kind {other:?}"))),
    }
}
