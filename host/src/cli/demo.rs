//! `dra-wasm-host demo`: the real binary in node mode, in a temporary
//! directory, driven by the in-tree test kubelet. It prints each step a
//! kubelet and a container runtime would see.
//!
//! The tonic test kubelet is the demo's kubelet: it runs in-process with no
//! cluster and no Go toolchain.

use anyhow::{Context, Result, bail, ensure};
use dra_test_support::claims::{Claim, ClaimsFile};
use dra_test_support::host::{DriverSpec, HostEnv};
use dra_test_support::kubelet::{Event, TestKubelet};
use std::time::{Duration, Instant};

const DRIVER: &str = "example.dra.dev";
const CLAIM_UID: &str = "5b2f3c1e-7a0d-4c8e-9f11-2d3e4f5a6b7c";

pub async fn run(keep: bool) -> Result<()> {
    let started = Instant::now();
    let env = HostEnv::new(&std::env::temp_dir().join("dra-wasm-host-demo-cache"))?;
    let guest = env.dir().join("example.wasm");
    std::fs::write(&guest, dra_wasm_host::EXAMPLE_GUEST)?;
    println!("dra-wasm-host demo: one node, one driver ({DRIVER}), the example guest");
    println!("  working directory  {}", env.dir().display());
    println!(
        "  guest              {} ({} KiB, simulated GPUs)\n",
        guest.display(),
        dra_wasm_host::EXAMPLE_GUEST.len() / 1024
    );

    // The claim the scheduler allocated: two devices, with an opaque config
    // from the claim that turns on time-slicing.
    let mut claims = ClaimsFile::new(&env.claims_path)?;
    let claim = Claim::new("default", "demo-gpus", CLAIM_UID)
        .device(DRIVER, "test-node", "gpu-0", "gpus")
        .device(DRIVER, "test-node", "gpu-1", "gpus")
        .opaque_config(
            "FromClaim",
            DRIVER,
            &["gpus"],
            serde_json::json!({"sharing": {"strategy": "TimeSlicing", "timeSlicing": {"interval": "Long"}}}),
        );
    claims.put(std::slice::from_ref(&claim))?;
    env.write_config(&[DriverSpec::new(DRIVER, &guest).config("devices = 4")], "")?;

    let kubelet = TestKubelet::start(&env.kubelet_root)?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut host = env.start(&exe)?;
    println!(
        "1. host started (pid {}): `dra-wasm-host run --config {}`",
        host.pid(),
        env.config_path.display()
    );

    let plugin = match kubelet.wait_for_plugin(DRIVER, Duration::from_secs(60)).await {
        Ok(p) => p,
        Err(e) => bail!("{e:#}\nhost log:\n{}", host.log()),
    };
    for event in kubelet.events() {
        if let Event::Registered {
            driver,
            endpoint,
            supported_versions,
            service,
        } = event
        {
            println!("2. kubelet found the registration socket and called GetInfo:");
            println!("     driver {driver}, endpoint {endpoint}");
            println!("     services {supported_versions:?} -> kubelet picked {service:?}");
            println!("     NotifyRegistrationStatus(registered = true)");
        }
    }

    let reference = claim.reference();
    let t = Instant::now();
    let answer = plugin.prepare(std::slice::from_ref(&reference)).await?;
    let took = t.elapsed();
    let entry = answer.get(CLAIM_UID).context("no answer entry for the claim")?;
    ensure!(entry.error.is_empty(), "prepare failed: {}", entry.error);
    println!("3. NodePrepareResources(default/demo-gpus) answered in {took:.2?}:");
    for d in &entry.devices {
        println!(
            "     {}/{} for requests {:?} -> CDI {}",
            d.pool_name,
            d.device_name,
            d.request_names,
            d.cdi_device_ids.join(", ")
        );
    }
    let spec_path = env.cdi_dir.join(format!("k8s.{DRIVER}-device_{CLAIM_UID}.json"));
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
    println!("4. CDI spec for the container runtime: {}", spec_path.display());
    println!("     cdiVersion {}, kind {}", spec["cdiVersion"], spec["kind"]);
    for d in spec["devices"].as_array().into_iter().flatten() {
        println!("     device {}: env {}", d["name"], d["containerEdits"]["env"]);
    }

    let again = plugin.prepare(std::slice::from_ref(&reference)).await?;
    ensure!(
        again.get(CLAIM_UID) == Some(entry),
        "a repeated prepare answered differently"
    );
    println!("5. NodePrepareResources again (the kubelet repeats it after restarts): same CDI IDs");

    let unprepared = plugin.unprepare(std::slice::from_ref(&reference)).await?;
    let error = unprepared.get(CLAIM_UID).context("no unprepare answer entry")?;
    ensure!(error.is_empty(), "unprepare failed: {error}");
    ensure!(!spec_path.exists(), "CDI spec still present after unprepare");
    println!("6. NodeUnprepareResources(default/demo-gpus): done, CDI spec removed");

    let status = host.terminate(Duration::from_secs(20))?;
    ensure!(status.success(), "host exited with {status}; log:\n{}", host.log());
    kubelet.wait_for_deregistration(DRIVER, Duration::from_secs(5)).await?;
    let sockets_left = ["plugins_registry", &format!("plugins/{DRIVER}")]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(env.kubelet_root.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
        .count();
    ensure!(sockets_left == 0, "{sockets_left} socket files left after shutdown");
    println!("7. SIGTERM: host deregistered, drained and exited cleanly ({status}); no sockets left");
    println!("\ndemo finished in {:.1?}", started.elapsed());
    if keep {
        println!("host log: {}", host.log_path().display());
        let dir = env.keep();
        println!("kept {}", dir.display());
    }
    Ok(())
}
