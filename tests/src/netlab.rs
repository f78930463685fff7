//! A networking lab for the tests and benchmarks of the `net` imports: veth
//! links as parent NICs in the node's namespace (names `dwt…`, never the
//! host's `dwh…`) and network namespaces with a sleeping process as "pods",
//! all removed when the [`Lab`] is dropped; and the CDI hook run as a
//! container runtime runs it. Everything here needs root.

use crate::claims::{Claim, uid};
use crate::host::DriverSpec;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether this process may create links and namespaces.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (install iproute2)")
}

pub fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ip_json(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ip(&full);
    assert!(
        out.status.success(),
        "ip {}: {}",
        full.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

static LABS: AtomicU32 = AtomicU32::new(0);

/// Parent links and pod namespaces of one test; removed on drop.
pub struct Lab {
    tag: String,
    pub parents: Vec<String>,
    pods: Vec<(String, Child)>,
}

impl Lab {
    pub fn new(parents: usize) -> Lab {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let mut lab = Lab {
            tag,
            parents: vec![],
            pods: vec![],
        };
        for i in 0..parents {
            // A veth pair: one end is the parent NIC, the other (`…p`)
            // stays up beside it so that the parent has carrier. (veth, not
            // dummy: not every kernel the tests run on has the dummy driver.)
            let name = format!("dwt{}{}", lab.tag, (b'a' + i as u8) as char);
            let peer = format!("{name}p");
            assert!(peer.len() <= 15, "{peer}");
            ip_ok(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
            lab.parents.push(name.clone());
            ip_ok(&["link", "set", &peer, "up"]);
            ip_ok(&["link", "set", &name, "up"]);
        }
        lab
    }

    /// A "pod": a namespace with a sleeping process in it. Returns (netns name, pid).
    pub fn pod(&mut self) -> (String, u32) {
        let ns = format!("dwtpod{}-{}", self.tag, self.pods.len());
        ip_ok(&["netns", "add", &ns]);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.pods.push((ns.clone(), child));
        // `ip netns exec` enters the namespace, then becomes `sleep`.
        let want = std::fs::metadata(format!("/run/netns/{ns}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                && std::os::unix::fs::MetadataExt::ino(&m) == std::os::unix::fs::MetadataExt::ino(&want)
            {
                break;
            }
            assert!(Instant::now() < deadline, "pod process did not enter {ns}");
            std::thread::sleep(Duration::from_millis(5));
        }
        (ns, pid)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (ns, child) in &mut self.pods {
            let _ = child.kill();
            let _ = child.wait();
            let _ = ip(&["netns", "del", ns]);
        }
        for p in &self.parents {
            // Deleting a parent deletes its veth peer and the macvlans on it.
            let _ = ip(&["link", "del", p]);
        }
    }
}

/// Run a hook as runc does: `path`, argv from the spec, OCI state on stdin.
pub fn run_hook(path: &str, args: &[String], pid: u32) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(path)
        .arg0(&args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = json!({
        "ociVersion": "1.2.0", "id": format!("ctr-{pid}"), "status": "creating", "pid": pid,
        "bundle": "/run/containerd/bundle", "annotations": {}
    });
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(state.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The macvlan guest as driver `driver`, granted `net` on the parent links
/// `granted`, with `guest_config` (see [`parent_config`]).
pub fn macvlan_driver(driver: &str, guest: &std::path::Path, granted: &[&str], guest_config: &str) -> DriverSpec {
    let granted: Vec<String> = granted.iter().map(|g| format!("{g:?}")).collect();
    DriverSpec::new(driver, guest)
        .extra(&format!(
            "grants = [\"net\"]\n[drivers.net]\nparents = [{}]\n",
            granted.join(", ")
        ))
        .config(guest_config)
}

/// The macvlan guest's `parents` config for `parents`: subnets 192.0.2.0/24,
/// 192.0.3.0/24, ... with ranges, gateways, a default route and 1G each.
pub fn parent_config(parents: &[String]) -> String {
    let entries: Vec<String> = parents
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "{{ name = {p:?}, subnet = \"192.0.{}.0/24\", rangeStart = \"192.0.{}.10\", rangeEnd = \"192.0.{}.20\", gateway = \"192.0.{}.1\", defaultRoute = true, bandwidth = \"1G\" }}",
                2 + i,
                2 + i,
                2 + i,
                2 + i
            )
        })
        .collect();
    format!("parents = [{}]", entries.join(", "))
}

/// A claim in namespace `net` for a share of `parent` with `bandwidth`.
pub fn share_claim(driver: &str, pool: &str, name: &str, n: u64, parent: &str, share: u64, bandwidth: &str) -> Claim {
    Claim::new("net", name, &uid(n)).shared_device(
        driver,
        pool,
        parent,
        "nic",
        &uid(share),
        &[("bandwidth", bandwidth)],
    )
}

/// A claim's createRuntime hook (program, argv) from its CDI spec.
pub fn cdi_hook(spec: &Value) -> (String, Vec<String>) {
    let hook = &spec["devices"][0]["containerEdits"]["hooks"][0];
    assert_eq!(hook["hookName"], "createRuntime", "{spec}");
    let args = hook["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    (hook["path"].as_str().unwrap().to_owned(), args)
}
