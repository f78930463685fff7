//! ResourceClaims from the API server, and this driver's entries in their
//! `status.devices`.

use super::client::{ApiClient, status_code};
use super::{ClaimSource, FetchError, FetchFuture, StatusCause, StatusError, StatusFuture};
use crate::claim::ClaimRef;
use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaim};
use kube::api::Api;

/// Attempts of a status update that keeps meeting newer versions (409).
const CONFLICT_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct ApiClaims {
    api: ApiClient,
}

impl ApiClaims {
    pub fn new(api: ApiClient) -> Self {
        Self { api }
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, kube::Error> {
        self.api
            .call("get ResourceClaim", |c| {
                let (namespace, name) = (namespace.to_owned(), name.to_owned());
                async move { Api::<ResourceClaim>::namespaced(c, &namespace).get_opt(&name).await }
            })
            .await
    }

    async fn set_status(
        &self,
        claim: &ClaimRef,
        driver: &str,
        entries: Vec<AllocatedDeviceStatus>,
    ) -> Result<(), StatusError> {
        let failed = |cause: StatusCause| StatusError {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            cause,
        };
        for _ in 0..CONFLICT_ATTEMPTS {
            let Some(mut object) = self
                .get(&claim.namespace, &claim.name)
                .await
                .map_err(|e| failed(StatusCause::Read(e)))?
            else {
                // Gone: nothing of ours to keep or remove.
                return if entries.is_empty() {
                    Ok(())
                } else {
                    Err(failed(StatusCause::Gone))
                };
            };
            if object.metadata.uid.as_deref() != Some(claim.uid.as_str()) {
                return if entries.is_empty() {
                    Ok(())
                } else {
                    Err(failed(StatusCause::Replaced))
                };
            }
            let status = object.status.get_or_insert_with(Default::default);
            let old = status.devices.clone().unwrap_or_default();
            let new = merge(&old, driver, entries.clone());
            if new == old {
                return Ok(());
            }
            status.devices = (!new.is_empty()).then_some(new);
            let result = self
                .api
                .call("update ResourceClaim status", |c| {
                    let (namespace, name, object) = (claim.namespace.clone(), claim.name.clone(), object.clone());
                    async move {
                        Api::<ResourceClaim>::namespaced(c, &namespace)
                            .replace_status(&name, &super::client::write_params(), &object)
                            .await
                    }
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if status_code(&e) == Some(409) => {
                    tracing::debug!(claim = %claim, "status update met a newer version of the claim; retrying");
                    continue;
                }
                Err(e) if status_code(&e) == Some(404) && entries.is_empty() => return Ok(()),
                Err(e) => return Err(failed(StatusCause::Update(e))),
            }
        }
        Err(failed(StatusCause::Conflicts(CONFLICT_ATTEMPTS)))
    }
}

/// Other drivers' entries untouched, ours replaced by `ours`. A condition
/// whose type and status did not change keeps its `lastTransitionTime`, so an
/// unchanged status compares equal and is not written again.
fn merge(
    old: &[AllocatedDeviceStatus],
    driver: &str,
    mut ours: Vec<AllocatedDeviceStatus>,
) -> Vec<AllocatedDeviceStatus> {
    for entry in &mut ours {
        let previous = old.iter().find(|o| {
            o.driver == driver && o.pool == entry.pool && o.device == entry.device && o.share_id == entry.share_id
        });
        if let (Some(prev), Some(conditions)) = (previous, entry.conditions.as_mut()) {
            for c in conditions {
                if let Some(p) = prev
                    .conditions
                    .iter()
                    .flatten()
                    .find(|p| p.type_ == c.type_ && p.status == c.status)
                {
                    c.last_transition_time = p.last_transition_time.clone();
                }
            }
        }
    }
    old.iter().filter(|o| o.driver != driver).cloned().chain(ours).collect()
}

impl ClaimSource for ApiClaims {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> FetchFuture<'a> {
        Box::pin(async move {
            match self.get(namespace, name).await {
                Ok(Some(claim)) => Ok(claim),
                Ok(None) => Err(FetchError::NotFound {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }),
                Err(source) => Err(FetchError::Api {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source,
                }),
            }
        })
    }

    fn set_driver_status<'a>(
        &'a self,
        claim: &'a ClaimRef,
        driver: &'a str,
        entries: Vec<AllocatedDeviceStatus>,
    ) -> StatusFuture<'a> {
        Box::pin(self.set_status(claim, driver, entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(driver: &str, device: &str) -> AllocatedDeviceStatus {
        AllocatedDeviceStatus {
            driver: driver.into(),
            pool: "p".into(),
            device: device.into(),
            ..Default::default()
        }
    }

    #[test]
    fn merge_replaces_only_our_entries() {
        let old = vec![
            entry("other.com", "n0"),
            entry("ours.com", "g0"),
            entry("ours.com", "g1"),
        ];
        let new = merge(&old, "ours.com", vec![entry("ours.com", "g0")]);
        assert_eq!(new, vec![entry("other.com", "n0"), entry("ours.com", "g0")]);
        assert_eq!(merge(&old, "ours.com", vec![]), vec![entry("other.com", "n0")]);
    }
}
