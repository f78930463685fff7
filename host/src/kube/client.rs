//! The host's one API-server client.
//!
//! Every request goes through [`ApiClient::call`], which applies a
//! client-side rate limit (token bucket with QPS and burst, as client-go
//! does) and retries what is worth retrying (429, 5xx, transport errors)
//! with capped exponential backoff and jitter. Nothing here loops without
//! waiting.

use serde::Deserialize;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant as Clock;

/// The field manager of every object and field the host writes, so that an
/// operator reading `managedFields` sees whose they are (without one, the API
/// server names the client library's user agent).
pub const FIELD_MANAGER: &str = "dra-wasm-host";

/// Parameters for every create and update the host makes.
pub fn write_params() -> kube::api::PostParams {
    kube::api::PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

/// Attempts per call, the first included (≈ 3 s of backoff in all).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The API-server client: the host config's `[kubernetes]` section
/// (owned here, where it is used; `config` names it).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Sustained requests per second to the API server.
    #[serde(default = "default_qps")]
    pub qps: f64,
    /// Requests allowed at once above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// UID of this node's Node object (owner of our ResourceSlices); looked up when absent.
    #[serde(default)]
    pub node_uid: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            qps: default_qps(),
            burst: default_burst(),
            node_uid: None,
        }
    }
}

fn default_qps() -> f64 {
    5.0
}
fn default_burst() -> u32 {
    10
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Kubernetes client configuration (neither in-cluster nor $KUBECONFIG)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Build(#[source] kube::Error),
}

#[derive(Clone)]
pub struct ApiClient {
    client: kube::Client,
    limiter: std::sync::Arc<RateLimiter>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("limiter", &self.limiter).finish()
    }
}

impl ApiClient {
    /// In-cluster configuration, or the kubeconfig named by `$KUBECONFIG` (or `~/.kube/config`).
    pub async fn new(config: &KubernetesConfig) -> Result<Self, ClientError> {
        let kube_config = kube::Config::infer().await.map_err(ClientError::Config)?;
        tracing::info!(server = %kube_config.cluster_url, qps = config.qps, burst = config.burst, "Kubernetes API client");
        let client = kube::Client::try_from(kube_config).map_err(ClientError::Build)?;
        Ok(Self {
            client,
            limiter: std::sync::Arc::new(RateLimiter::new(config.qps, config.burst)),
        })
    }

    /// Run one API operation under the rate limit, retrying transient failures.
    pub async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, kube::Error>
    where
        F: Fn(kube::Client) -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            self.limiter.acquire().await;
            match op(self.client.clone()).await {
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    let wait = jitter(backoff);
                    tracing::debug!(what, attempt, error = %e, wait_ms = wait.as_millis() as u64, "API request failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// 429 (throttled), 5xx, and failures to reach the server.
pub fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || (500..600).contains(&s.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The HTTP status of an API error, if it is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An API error with its causes, for messages people read: kube's own text
/// stops at "client error (Connect)"; why (connection refused, a TLS
/// failure, a timeout) is in its sources.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error::chain(e)
}

/// ±25 % so that many nodes retrying together spread out.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0)
        ^ u64::from(std::process::id());
    let spread = (nanos % 500) as f64 / 1000.0 + 0.75;
    d.mul_f64(spread)
}

/// A token bucket: `burst` tokens, refilled at `qps` per second, served
/// first come, first served.
///
/// As golang.org/x/time/rate's `Reserve` (client-go's limiter): a caller
/// takes its token when it arrives, the count going below zero when the
/// bucket is empty, and sleeps until the refill has paid for it. The n-th
/// caller to find the bucket empty goes n/qps after it ran dry, in arrival
/// order, whatever order the runtime then wakes the sleepers in. (Waking the
/// waiters to race for each token let the runtime's wake order and late
/// arrivals decide, so one caller could lose round after round: issue 26.)
///
/// A caller dropped before its time (its request cancelled) gives its token
/// back only if no one has reserved after it; otherwise its slot goes unused
/// and those behind keep theirs, never later than they were given. This is
/// what Go's `Reservation.Cancel` does: handing the slot to the next arrival
/// would put two requests in one slot (the rate held only on average), and
/// moving everyone behind up a slot would need waking each of them. The cost
/// is at most one slot per cancelled caller.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Below zero: owed to the callers waiting.
    tokens: f64,
    /// When `tokens` was counted.
    at: Clock,
    /// Callers that have waited, the last of them numbered this.
    reserved: u64,
}

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                at: Clock::now(),
                reserved: 0,
            }),
        }
    }

    /// The bucket, refilled up to now.
    fn bucket(&self, now: Clock) -> std::sync::MutexGuard<'_, Bucket> {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.qps).min(self.burst);
        b.at = now;
        b
    }

    /// Wait for a token: at once if the bucket has one, else until the
    /// refill reaches this caller, after every caller that arrived before it.
    pub async fn acquire(&self) {
        let now = Clock::now();
        let (slot, number) = {
            let mut b = self.bucket(now);
            b.tokens -= 1.0;
            if b.tokens >= 0.0 {
                return;
            }
            b.reserved += 1;
            (now + Duration::from_secs_f64(-b.tokens / self.qps), b.reserved)
        };
        let _reservation = Reservation {
            limiter: self,
            slot,
            number,
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// A caller waiting for its slot; dropped before it, the token goes back if
/// no one reserved after it (see [`RateLimiter`]).
struct Reservation<'a> {
    limiter: &'a RateLimiter,
    slot: Clock,
    number: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let now = Clock::now();
        if now >= self.slot {
            return; // used (or as good as)
        }
        let mut b = self.limiter.bucket(now);
        if b.reserved == self.number {
            b.tokens = (b.tokens + 1.0).min(self.limiter.burst);
            // The one before is the last again, and may give back in turn.
            b.reserved -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_burst_then_the_rate() {
        let l = RateLimiter::new(10.0, 5);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(1), "the burst is immediate");
        for _ in 0..10 {
            l.acquire().await;
        }
        // 10 more tokens at 10/s take about a second.
        assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
    }

    /// The order in which [`drive`] polls the callers already waiting at
    /// each millisecond; a runtime may run woken tasks in any order (tokio's
    /// multi-threaded one, for one, may run the most recently woken first).
    #[derive(Clone, Copy, Debug)]
    enum Wake {
        OldestFirst,
        NewestFirst,
    }

    type Waiting<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

    /// Callers of `l.acquire()`, the k-th arriving `arrivals[k]` ms after
    /// the start (ascending; arrival is the first poll), and the k-th given
    /// up (dropped) at `cancel[k]` ms if still waiting. Each millisecond of
    /// paused time polls the waiting callers in `wake` order, then the new
    /// arrivals. Returns (caller, admission time after the start) in
    /// admission order.
    async fn drive(l: &RateLimiter, arrivals: &[u64], cancel: &[Option<u64>], wake: Wake) -> Vec<(usize, Duration)> {
        let start = Clock::now();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut waiting: Vec<(usize, Waiting<'_>)> = Vec::new();
        let mut admitted = Vec::new();
        let mut next = 0;
        for ms in 0.. {
            waiting.retain(|(k, _)| cancel.get(*k).copied().flatten() != Some(ms));
            let mut order: Vec<usize> = (0..waiting.len()).collect();
            if let Wake::NewestFirst = wake {
                order.reverse();
            }
            while next < arrivals.len() && arrivals[next] == ms {
                waiting.push((next, Box::pin(l.acquire())));
                order.push(waiting.len() - 1);
                next += 1;
            }
            let mut done = Vec::new();
            for i in order {
                if waiting[i].1.as_mut().poll(&mut cx).is_ready() {
                    admitted.push((waiting[i].0, start.elapsed()));
                    done.push(i);
                }
            }
            done.sort_unstable();
            for i in done.into_iter().rev() {
                drop(waiting.remove(i));
            }
            if waiting.is_empty() && next == arrivals.len() {
                break;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        admitted
    }

    /// When the (k+1)-th caller may go at `q` and `b` from a full bucket,
    /// all arriving at once: after k+1-b refills.
    fn slot(k: usize, q: f64, b: u32) -> Duration {
        Duration::from_secs_f64((k as f64 + 1.0 - f64::from(b)).max(0.0) / q)
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_admitted_in_arrival_order_each_by_its_slot() {
        const N: usize = 25;
        for (q, b) in [(5.0, 10), (3.0, 4), (7.0, 1)] {
            for gap in [0, 10, 37] {
                for wake in [Wake::OldestFirst, Wake::NewestFirst] {
                    let arrivals: Vec<u64> = (0..N as u64).map(|k| k * gap).collect();
                    let l = RateLimiter::new(q, b);
                    let admitted = drive(&l, &arrivals, &[], wake).await;
                    let case = format!("qps {q}, burst {b}, a caller every {gap} ms, {wake:?}");
                    let order: Vec<usize> = admitted.iter().map(|a| a.0).collect();
                    assert_eq!(order, (0..N).collect::<Vec<_>>(), "{case}: admission order");
                    for &(k, at) in &admitted {
                        let arrived = Duration::from_millis(arrivals[k]);
                        let bound = slot(k, q, b).max(arrived) + Duration::from_millis(1);
                        assert!(
                            at <= bound,
                            "{case}: caller {k} (arrived {arrived:?}) admitted at {at:?}, after {bound:?}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_is_back_after_idle_and_no_more() {
        let l = RateLimiter::new(5.0, 10);
        // Drain it: 10 at once, then 5 more at 200 ms apart.
        let admitted = drive(&l, &[0; 15], &[], Wake::OldestFirst).await;
        assert_eq!(admitted.last().unwrap().1, Duration::from_secs(1));
        // A minute idle refills 10 tokens, not 300.
        tokio::time::advance(Duration::from_secs(60)).await;
        let admitted = drive(&l, &[0; 12], &[], Wake::OldestFirst).await;
        let times: Vec<u64> = admitted.iter().map(|a| a.1.as_millis() as u64).collect();
        assert_eq!(times, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_given_up_does_not_delay_those_behind_it() {
        let ms = |a: &[(usize, Duration)]| a.iter().map(|&(k, t)| (k, t.as_millis() as u64)).collect::<Vec<_>>();
        // At 5/s with a burst of 1, callers 1..=4 arriving at once hold the
        // slots 200, 400, 600 and 800 ms. Caller 2 gives up at 100 ms: 3
        // and 4 keep their slots, and 5, arriving later, queues behind 4
        // (the slot given up in the middle of the queue goes unused).
        let l = RateLimiter::new(5.0, 1);
        let admitted = drive(&l, &[0, 0, 0, 0, 0, 150], &[None, None, Some(100)], Wake::NewestFirst).await;
        assert_eq!(ms(&admitted), [(0, 0), (1, 200), (3, 600), (4, 800), (5, 1000)]);
        // The last one in the queue giving up hands its slot back: 5 takes it.
        let l = RateLimiter::new(5.0, 1);
        let admitted = drive(
            &l,
            &[0, 0, 0, 0, 0, 150],
            &[None, None, None, None, Some(100)],
            Wake::NewestFirst,
        )
        .await;
        assert_eq!(ms(&admitted), [(0, 0), (1, 200), (2, 400), (3, 600), (5, 800)]);
        // As do several from the back, one after another.
        let l = RateLimiter::new(5.0, 1);
        let cancel = [None, None, None, Some(100), Some(50)];
        let admitted = drive(&l, &[0, 0, 0, 0, 0, 150], &cancel, Wake::NewestFirst).await;
        assert_eq!(ms(&admitted), [(0, 0), (1, 200), (2, 400), (5, 600)]);
    }

    #[test]
    fn retries_only_transient_errors() {
        let api = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: String::new(),
                reason: String::new(),
                status: None,
                metadata: None,
                details: None,
            }))
        };
        assert!(retryable(&api(429)));
        assert!(retryable(&api(503)));
        assert!(!retryable(&api(404)));
        assert!(!retryable(&api(409)));
        assert!(!retryable(&api(403)));
    }
}
