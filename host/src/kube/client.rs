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

/// A token bucket: `burst` tokens, refilled at `qps` per second.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Clock)>,
}

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            state: Mutex::new((burst, Clock::now())),
        }
    }

    /// Wait for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Clock::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.qps).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.qps)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
