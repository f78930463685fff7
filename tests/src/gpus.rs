//! Simulated GPUs for the host's `[nvml.simulated]` backend, and injection of
//! NVML events through its events socket.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub const DRIVER_VERSION: &str = "580.159.04";

/// The UUID of simulated GPU `index`.
pub fn uuid(index: u32) -> String {
    format!("GPU-{index:08x}-5a1d-4c0e-9f00-00000000beef")
}

/// Write a GPUs file describing `n` H100s.
pub fn write_gpus_file(path: &Path, n: u32) -> Result<()> {
    write_gpus_file_with(path, n, |_| json!({}))
}

/// Write a GPUs file describing `n` H100s, each with the keys `extra(i)`
/// adds (e.g. `{"migEnabled": true, "numaNode": 1}`; the simulated NVML's
/// module documentation lists them).
pub fn write_gpus_file_with(path: &Path, n: u32, extra: impl Fn(u32) -> Value) -> Result<()> {
    let gpus: Vec<Value> = (0..n)
        .map(|i| {
            let mut gpu = json!({
                "uuid": uuid(i),
                "productName": "NVIDIA H100 80GB HBM3",
                "brand": "Nvidia",
                "architecture": "Hopper",
                "cudaComputeCapability": [9, 0],
                "memoryTotalBytes": 85_520_809_984u64,
                "pciBusId": format!("00000000:{:02X}:00.0", 0x19 + i),
                "minorNumber": i,
            });
            if let (Some(gpu), Value::Object(extra)) = (gpu.as_object_mut(), extra(i)) {
                gpu.extend(extra);
            }
            gpu
        })
        .collect();
    let doc = json!({ "driverVersion": DRIVER_VERSION, "cudaDriverVersion": [13, 0], "gpus": gpus });
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

/// Lay out a fake driver root holding the files the host looks for.
pub fn write_driver_root(root: &Path) -> Result<()> {
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib)?;
    std::fs::write(lib.join(format!("libcuda.so.{DRIVER_VERSION}")), b"\x7fELF")?;
    std::fs::write(lib.join(format!("libnvidia-ml.so.{DRIVER_VERSION}")), b"\x7fELF")?;
    std::fs::create_dir_all(root.join("usr/bin"))?;
    std::fs::write(root.join("usr/bin/nvidia-smi"), b"\x7fELF")?;
    Ok(())
}

/// Character device nodes as the NVIDIA driver creates them, made with
/// mknod(2) under `root/dev` (root only): `nvidia<i>` (195:i) for `n` GPUs,
/// `nvidiactl` (195:255), `nvidia-uvm` and `nvidia-uvm-tools` (510:0 and
/// 510:1; the driver's major for them is dynamic). For a host whose policy
/// has `device_root = root`.
pub fn write_device_root(root: &Path, n: u32) -> Result<()> {
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev)?;
    let mut nodes: Vec<(String, u32, u32)> = (0..n).map(|i| (format!("nvidia{i}"), 195, i)).collect();
    nodes.push(("nvidiactl".into(), 195, 255));
    nodes.push(("nvidia-uvm".into(), 510, 0));
    nodes.push(("nvidia-uvm-tools".into(), 510, 1));
    for (name, major, minor) in nodes {
        let path = std::ffi::CString::new(dev.join(&name).to_string_lossy().into_owned())?;
        // SAFETY: mknod(2) with a valid NUL-terminated path.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)) };
        if rc != 0 {
            bail!("mknod {name} (needs root): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The MIG capability device nodes `/dev/nvidia-caps/nvidia-capN` the
/// simulated NVML hands out for GPU minor `minor` (GPU instances 1 to 14,
/// compute instance 0), made under `root/dev` (root only), as the NVIDIA
/// driver numbers them (its `/proc/driver/nvidia-caps/mig-minors`).
pub fn write_mig_cap_nodes(root: &Path, minor: u32) -> Result<()> {
    let caps = root.join("dev/nvidia-caps");
    std::fs::create_dir_all(&caps)?;
    for gi in 1..15 {
        let first = 3 + minor * 15 * 9 + gi * 9;
        for n in [first, first + 1] {
            let path = std::ffi::CString::new(caps.join(format!("nvidia-cap{n}")).to_string_lossy().into_owned())?;
            // SAFETY: mknod(2) with a valid NUL-terminated path.
            let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o444, libc::makedev(509, n)) };
            if rc != 0 {
                bail!("mknod nvidia-cap{n} (needs root): {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The policy of a GPU driver whose device nodes are under `device_root`
/// and whose user-space files are under `driver_root` (the worked NVIDIA
/// example of docs/operations.md, with test paths).
pub fn policy_toml(device_root: &Path, driver_root: &Path) -> String {
    format!(
        "[drivers.policy]\n\
         device_root = {device_root:?}\n\
         device_nodes = [\"/dev/nvidia[0-9]*\", \"/dev/nvidiactl\", \"/dev/nvidia-uvm\", \"/dev/nvidia-uvm-tools\", \"/dev/nvidia-caps/nvidia-cap[0-9]*\"]\n\
         mount_host_paths = [\"{}/**\"]\n",
        driver_root.display()
    )
}

/// `n` simulated H100s laid out in `dir` for one host: the GPUs file, a fake
/// driver root, device nodes (root only) and the events socket's path.
#[derive(Clone, Debug)]
pub struct Simulated {
    /// The host config's top-level `[nvml]` tables.
    pub tables: String,
    /// The `[[drivers]]` keys of a GPU driver: the `nvml` grant and the policy.
    pub driver_toml: String,
    /// Where the host listens for injected events ([`Injector`]).
    pub events: PathBuf,
}

impl Simulated {
    pub fn new(dir: &Path, n: u32) -> Result<Self> {
        Self::with(dir, n, |_| json!({}))
    }

    /// `n` simulated H100s, each with the GPUs file keys `extra(i)` adds;
    /// MIG capability nodes for those with `migEnabled`.
    pub fn with(dir: &Path, n: u32, extra: impl Fn(u32) -> Value) -> Result<Self> {
        let gpus_file = dir.join("gpus.json");
        write_gpus_file_with(&gpus_file, n, &extra)?;
        let driver_root = dir.join("driver-root");
        write_driver_root(&driver_root)?;
        let device_root = dir.join("device-root");
        write_device_root(&device_root, n)?;
        for i in (0..n).filter(|&i| extra(i)["migEnabled"] == json!(true)) {
            write_mig_cap_nodes(&device_root, i)?;
        }
        let events = dir.join("nvml-events.sock");
        Ok(Self {
            tables: format!(
                "[nvml]\ndriver_root = {driver_root:?}\n[nvml.simulated]\ngpus = {gpus_file:?}\nevents_socket = {events:?}\n"
            ),
            driver_toml: format!("grants = [\"nvml\"]\n{}", policy_toml(&device_root, &driver_root)),
            events,
        })
    }
}

/// Injects events into a running host's simulated NVML.
pub struct Injector {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Injector {
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let (read, write) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Inject one event; returns how many drivers received it.
    pub async fn inject(&mut self, uuid: &str, kind: &str, data: u64) -> Result<u64> {
        let line = json!({ "uuid": uuid, "kind": kind, "data": data }).to_string() + "\n";
        self.write.write_all(line.as_bytes()).await?;
        let reply = self.lines.next_line().await?.context("events socket closed")?;
        let reply: Value = serde_json::from_str(&reply)?;
        match reply.get("delivered").and_then(Value::as_u64) {
            Some(n) => Ok(n),
            None => bail!("injection refused: {reply}"),
        }
    }

    /// An Xid on GPU `index`.
    pub async fn xid(&mut self, index: u32, xid: u64) -> Result<u64> {
        self.inject(&uuid(index), "xid-critical-error", xid).await
    }
}
