//! What the benchmarks in `tests/bench/` share: command-line arguments and
//! latency summaries, so that every benchmark reports percentiles the same way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The value after `name` on the command line (`cargo bench --bench X -- --name 5`),
/// or `default` when it is absent or does not parse.
pub fn arg<T: FromStr>(name: &str, default: T) -> T {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of a process so far, from `/proc/<pid>/stat`:
/// how benchmarks report the host's CPU per operation, a figure that
/// compares across machines better than wall-clock time.
pub fn process_cpu_time(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("/proc/{pid}/stat: {stat}"));
    let rest = stat.get(stat.rfind(')').ok_or_else(bad)? + 2..).ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad);
    let ticks = field(11)? + field(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// A memory field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...) in KiB:
/// how benchmarks and tests read the host's resident memory.
pub fn status_kib(pid: u32, field: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix(" kB")?.trim().parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no {field} in /proc/{pid}/status"),
            )
        })
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentiles of a set of latencies.
#[derive(Clone, Copy, Debug)]
pub struct Latencies {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub samples: usize,
}

impl Latencies {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let last = *sorted.last()?;
        let at = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
        Some(Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: last,
            samples: sorted.len(),
        })
    }
}

impl fmt::Display for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms ({} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.samples
        )
    }
}

/// One kubelet caller of the throughput benches: prepare → unprepare of
/// each of `claims` in turn over its own connection until `deadline`,
/// every answer checked; the latencies of the prepares and of the
/// unprepares. `label` names the driver in a failure.
pub async fn prepare_unprepare_until(
    mut client: dra_proto::dra::v1::dra_plugin_client::DraPluginClient<tonic::transport::Channel>,
    claims: Vec<dra_proto::dra::v1::Claim>,
    deadline: std::time::Instant,
    label: &str,
) -> (Vec<Duration>, Vec<Duration>) {
    use dra_proto::dra::v1;
    use std::time::Instant;
    let (mut prepare, mut unprepare) = (Vec::new(), Vec::new());
    'calls: loop {
        for claim in &claims {
            if Instant::now() >= deadline {
                break 'calls;
            }
            let request = v1::NodePrepareResourcesRequest {
                claims: vec![claim.clone()],
            };
            let t = Instant::now();
            let answer = client.node_prepare_resources(request).await.expect("prepare");
            prepare.push(t.elapsed());
            let error = &answer.get_ref().claims[&claim.uid].error;
            assert!(error.is_empty(), "{label}: prepare: {error}");
            let request = v1::NodeUnprepareResourcesRequest {
                claims: vec![claim.clone()],
            };
            let t = Instant::now();
            let answer = client.node_unprepare_resources(request).await.expect("unprepare");
            unprepare.push(t.elapsed());
            let error = &answer.get_ref().claims[&claim.uid].error;
            assert!(error.is_empty(), "{label}: unprepare: {error}");
        }
    }
    (prepare, unprepare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(process_cpu_time(std::process::id()).unwrap() >= Duration::from_millis(10));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latencies::of(&samples).unwrap();
        assert_eq!(l.p50, Duration::from_millis(51));
        assert_eq!(l.p90, Duration::from_millis(91));
        assert_eq!(l.p99, Duration::from_millis(100));
        assert_eq!(l.max, Duration::from_millis(100));
        assert_eq!(l.samples, 100);
        assert!(Latencies::of(&[]).is_none());
        assert!(l.to_string().starts_with("p50 51.000 ms"));
    }
}
