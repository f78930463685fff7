//! What `guest run` prints: one YAML document per claim or event.

use super::*;

/// What `prepare` prints per claim.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PrepareReport {
    pub(super) claim: String,
    pub(super) uid: String,
    /// `Accepted`; `Rejected` when the host refused the guest's answer
    /// (policy, CDI rules); `Failed` for anything else.
    pub(super) verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    /// The kubelet's answer.
    pub(super) devices: Vec<dra_wasm_host::claim::PreparedDevice>,
    /// Its name in the CDI directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cdi_spec_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cdi_spec: Option<Value>,
    /// What the host writes into the claim's `status.devices`.
    pub(super) status_devices: Vec<AllocatedDeviceStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UnprepareReport {
    pub(super) claim: String,
    pub(super) uid: String,
    /// Whether the checkpoint had it; unknown claims get an unprepare with
    /// empty state, as the host does after a crash between prepare and commit.
    pub(super) checkpointed: bool,
    pub(super) result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventReport {
    pub(super) event: String,
    /// Drivers the host's router handed it to (0: the guest did not subscribe to it).
    pub(super) delivered: usize,
    /// What the guest's `on-event` returned.
    pub(super) reports: Vec<HealthReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) errors: Vec<String>,
    /// Health the host now reports to the kubelet, where it changed.
    pub(super) changes: Vec<HealthChange>,
}

#[derive(Serialize)]
pub(super) struct HealthReport {
    pub(super) pool: String,
    pub(super) device: String,
    pub(super) status: &'static str,
    pub(super) message: String,
}

impl From<&model::DeviceHealth> for HealthReport {
    fn from(h: &model::DeviceHealth) -> Self {
        Self {
            pool: h.pool.clone(),
            device: h.device.clone(),
            status: match h.status {
                model::HealthStatus::Healthy => "Healthy",
                model::HealthStatus::Unhealthy => "Unhealthy",
                model::HealthStatus::Unknown => "Unknown",
            },
            message: h.message.clone(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct HealthChange {
    pub(super) pool: String,
    pub(super) device: String,
    pub(super) from: Option<&'static str>,
    pub(super) to: &'static str,
    pub(super) message: String,
}

/// Print YAML documents, `---` between them.
pub(super) fn print_yaml<T: Serialize>(docs: &[T]) -> Result<()> {
    let mut out = Yaml::default();
    docs.iter().try_for_each(|d| out.print(d))
}

/// YAML documents on stdout, each as soon as it is ready.
#[derive(Default)]
pub(super) struct Yaml {
    pub(super) started: bool,
}

impl Yaml {
    pub(super) fn print<T: Serialize>(&mut self, doc: &T) -> Result<()> {
        let text = serde_saphyr::to_string(doc).context("writing YAML")?;
        if std::mem::replace(&mut self.started, true) {
            println!("---");
        }
        print!("{text}");
        Ok(())
    }
}
