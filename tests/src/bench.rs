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

#[cfg(test)]
mod tests {
    use super::*;

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
