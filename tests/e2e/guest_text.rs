//! Issue 13, part 2: guest text is bounded and cannot break the kubelet's
//! answer or forge log lines. Guest error messages, log lines and trap
//! causes reach the answer and the log cut and with control characters
//! escaped, and one call's answer stays under grpc-go's 4 MiB receive limit
//! (the test kubelet's tonic client has the same default) whatever the
//! guest's errors, without losing the good claims of the batch.
//!
//! The tonic test kubelet calls the host: one answer carrying 6 MB of claim
//! errors beside a good claim, read entry by entry; the kubelet's DRA manager
//! keeps only a Pod's first claim error (grpc-go's 4 MiB limit is checked by
//! the grpc-go peer here).

use crate::common::*;
use dra_test_support::claims::{Claim, uid};
use dra_test_support::host::{DriverSpec, HostEnv};

const FAULTY: &str = "faulty.dra.dev";
/// The start of the log line the guest tries to forge.
const FORGED_LINE: &str = "2026-01-01T00:00:00.000000Z  INFO dra_wasm_host::driver: FORGED";

async fn faulty_node(log_filter: Option<&str>) -> Node {
    let mut env = HostEnv::new(&cache_dir()).unwrap();
    env.log_filter = log_filter.map(str::to_owned);
    let spec = DriverSpec::new(FAULTY, &guest("faulty_driver.wasm")).config("devices = 4");
    Node::start_in(env, vec![spec], "call_timeout_ms = 5000\nmemory_limit_mib = 64", "").await
}

fn claim(name: &str, n: u64) -> Claim {
    Claim::new("default", name, &uid(n)).device(FAULTY, "faulty", "dev-0", "dev")
}

/// No line of the host's log is the forged one, holds an escape character
/// or is longer than `max`.
fn assert_log_clean(log: &str, max: usize) {
    for line in log.lines() {
        assert!(!line.starts_with(FORGED_LINE), "forged log line: {line}");
        assert!(!line.contains('\x1b'), "raw escape character in the log: {line:?}");
        assert!(line.len() <= max, "a {}-byte log line: {}…", line.len(), &line[..200]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_megabyte_errors_and_a_good_claim_fit_one_answer() {
    let mut node = faulty_node(None).await;
    let mut all: Vec<Claim> = (1..=6).map(|i| claim(&format!("longerror-{i}"), i)).collect();
    let good = claim("healthy", 7);
    all.push(good.clone());
    node.claims.put(&all).unwrap();

    let answer = node
        .plugin
        .prepare(&all.iter().map(Claim::reference).collect::<Vec<_>>())
        .await
        .expect("the answer fits the kubelet's 4 MiB receive limit");
    assert_eq!(answer.len(), 7);
    assert_eq!(answer[&good.uid].error, "", "the good claim of the batch is kept");
    assert_eq!(answer[&good.uid].devices[0].device_name, "dev-0");
    for c in &all[..6] {
        let e = &answer[&c.uid].error;
        assert!(e.starts_with("guest prepare failed"), "{e:?}");
        assert!(e.len() <= 2048, "{} bytes of error", e.len());
        assert!(!e.contains('\n') && !e.contains('\x1b'), "{e:?}");
        assert!(e.contains("bad thing\\n2026-01-01"), "escaped, not dropped: {e:?}");
        assert!(e.contains("bytes cut"), "says it was cut: {e:?}");
    }
    assert_log_clean(&node.host.log(), 16 << 10);
}

/// The same batch from grpc-go, the kubelet's own gRPC library, with its
/// default 4 MiB receive limit (tests/peers/go, `-batch`): before the bound
/// it got RESOURCE_EXHAUSTED for the whole call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_gets_one_answer_for_six_megabyte_errors_and_a_good_claim() {
    use crate::kubelet_clients::{go_programs, run_peer, skipped};
    if skipped("grpc_go_gets_one_answer_for_six_megabyte_errors_and_a_good_claim") {
        return;
    }
    let go = go_programs().await;
    let mut node = faulty_node(None).await;
    let mut all: Vec<Claim> = (1..=6).map(|i| claim(&format!("longerror-{i}"), i)).collect();
    all.push(claim("healthy", 7));
    node.claims.put(&all).unwrap();
    let socket = node.env.kubelet_root.join("plugins").join(FAULTY).join("dra.sock");
    let batch: Vec<String> = all
        .iter()
        .map(|c| format!("{}/{}/{}", c.namespace, c.name, c.uid))
        .collect();
    let run = run_peer(
        "grpc-go batch prepare",
        &go.peer,
        &[
            "-dial",
            "new-client",
            "-endpoint",
            socket.to_str().unwrap(),
            "-batch",
            &batch.join(","),
        ],
        Some(&node.host),
    )
    .await;
    let step = run.ok("v1.NodePrepareResources (batch)");
    let answers = step["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 7, "{}", run.context());
    for a in &answers[..6] {
        let bytes = a["error_bytes"].as_u64().unwrap();
        assert!((1..=2048).contains(&bytes), "{a}");
        assert!(
            a["error_head"].as_str().unwrap().starts_with("guest prepare failed"),
            "{a}"
        );
    }
    assert_eq!(
        (answers[6]["error_bytes"].as_u64(), answers[6]["devices"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(step["bytes"].as_u64().unwrap() < 4 << 20, "{step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_log_lines_cannot_forge_host_log_lines() {
    let mut node = faulty_node(None).await;
    let c = claim("forgelog", 1);
    node.claims.put(std::slice::from_ref(&c)).unwrap();
    let answer = node.plugin.prepare(&[c.reference()]).await.unwrap();
    assert_eq!(answer[&c.uid].error, "");
    let log = node.host.log();
    assert!(
        log.contains("bad thing\\n2026-01-01"),
        "the guest's line, escaped:\n{log}"
    );
    assert_log_clean(&log, 16 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_read_as_a_short_cause_with_the_backtrace_in_the_debug_log() {
    let mut node = faulty_node(Some("info,dra_wasm_host=debug")).await;
    let cases = [
        (claim("trap-now", 1), "guest panicked"),
        (claim("stack-overflow", 2), "stack overflow"),
    ];
    let all: Vec<Claim> = cases.iter().map(|(c, _)| c.clone()).collect();
    node.claims.put(&all).unwrap();
    let answer = node
        .plugin
        .prepare(&all.iter().map(Claim::reference).collect::<Vec<_>>())
        .await
        .unwrap();
    for (c, cause) in &cases {
        let e = &answer[&c.uid].error;
        assert!(e.contains("trapped") && e.contains(cause), "{}: {e:?}", c.name);
        assert!(e.len() <= 512, "{}: a {}-byte error: {e:?}", c.name, e.len());
        assert!(!e.contains("backtrace") && !e.contains('\n'), "{}: {e:?}", c.name);
    }
    let log = node.host.log();
    assert!(
        log.contains("wasm backtrace"),
        "the backtrace is in the debug log:\n{log}"
    );
}
