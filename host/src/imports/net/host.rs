//! What a guest's `net` calls do, with the host's types, and their
//! authorisation: every call acts for the driver's grant, and only for the
//! claim of the call ([`ImportsView::claim`]). The WIT adapters are in
//! `wit::shared` (`net` is the same in every contract version).

use super::types::{AddressRequest, Attachment, Link, Macvlan, NetError};
use super::*;
use crate::imports::ImportsView;
use crate::model::Hook;
use std::sync::Arc;

/// A driver's grant of `net`.
#[derive(Clone, Debug)]
pub struct NetGrant {
    pub driver: Arc<NetDriver>,
}

fn grant(state: &ImportsView<'_>) -> Result<Arc<NetDriver>, NetError> {
    // Only guests granted `net` are linked with this interface.
    state
        .imports
        .net
        .as_ref()
        .map(|g| Arc::clone(&g.driver))
        .ok_or_else(|| NetError {
            message: "net is not granted to this driver".into(),
        })
}

/// What a guest's net call acts on, checked against the claim of the call
/// ([`ImportsView::claim`]) before the operation runs.
enum Acts {
    /// The node's links as the driver may see them (`list-links`).
    OnNode,
    /// A claim's links and addresses, by its UID: it must be the claim of
    /// the call.
    ForClaim(String),
    /// A link by name: it must be one the host created for the claim of the
    /// call.
    OnLink(String),
}

/// Run one net operation for the guest on the blocking pool
/// ([`crate::imports::blocking`]): each is netlink round trips and a
/// durable write of the driver's state. First, what it `acts` on must be the
/// claim of the call: a guest acting for another claim could take down that
/// claim's pod network (`release-claim`) or give its pod another pod's link.
/// A refusal is a net-error naming both claims, and a warning in the log.
fn run<T, F>(state: &ImportsView<'_>, acts: Acts, op: F) -> impl Future<Output = NetAnswer<T>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(&NetDriver) -> Result<T, NetOpError> + Send + 'static,
{
    let claim = state.claim.map(str::to_owned);
    let checked = grant(state).and_then(|driver| {
        let link = match acts {
            Acts::OnNode => None,
            Acts::ForClaim(asked) => {
                acting_for(claim.as_deref(), &asked)?;
                None
            }
            Acts::OnLink(name) => Some(name),
        };
        Ok((driver, link))
    });
    let deadline = state.deadline;
    async move {
        let (driver, link) = match checked {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let work = move || {
            if let Some(name) = &link {
                owned(&driver, name, claim.as_deref())?;
            }
            op(&driver)
        };
        Ok(match crate::imports::blocking(deadline, work).await? {
            Some(result) => result.map_err(NetError::from),
            None => Err(NetError {
                message: "the host's network operation failed (see the host's log)".into(),
            }),
        })
    }
}

/// [`Acts::ForClaim`]: `asked` must be `claim`, the claim of the call.
fn acting_for(claim: Option<&str>, asked: &str) -> Result<(), NetError> {
    let why = match claim {
        Some(current) if current == asked => return Ok(()),
        Some(current) => format!("claim {asked:?} is not the claim of this call ({current:?})"),
        None => format!("claim {asked:?}: the net import acts for a claim only during its prepare or unprepare"),
    };
    tracing::warn!(asked = %asked, call_claim = ?claim, "refused a guest's net call for another claim");
    Err(NetError { message: why })
}

/// [`Acts::OnLink`]: the link `name` must have been created for `claim`.
fn owned(d: &NetDriver, name: &str, claim: Option<&str>) -> Result<(), NetOpError> {
    let owner = d.record(name)?.claim_uid;
    if claim == Some(owner.as_str()) {
        return Ok(());
    }
    tracing::warn!(link = %name, link_claim = %owner, call_claim = ?claim, "refused a guest's net call on another claim's link");
    Err(NetOpError::Denied(match claim {
        Some(current) => {
            format!("link {name:?} belongs to claim {owner:?}, not to the claim of this call ({current:?})")
        }
        None => format!("link {name:?}: the net import acts on a claim's links only during its prepare or unprepare"),
    }))
}

/// A net call's outcome for the guest: a trap (its deadline passed), or the
/// operation's answer.
pub type NetAnswer<T> = wasmtime::Result<Result<T, NetError>>;

/// The guest's `net` calls, each checked against what it acts on.
impl ImportsView<'_> {
    pub async fn net_list_links(&self) -> NetAnswer<Vec<Link>> {
        run(self, Acts::OnNode, |d| d.list_links()).await
    }

    pub async fn net_create_macvlan(&self, spec: Macvlan) -> NetAnswer<Link> {
        run(self, Acts::ForClaim(spec.claim_uid.clone()), move |d| {
            d.create_macvlan(&spec)
        })
        .await
    }

    pub async fn net_delete_link(&self, name: String) -> NetAnswer<bool> {
        run(self, Acts::OnLink(name.clone()), move |d| d.delete_link(&name)).await
    }

    pub async fn net_allocate_address(&self, request: AddressRequest) -> NetAnswer<String> {
        run(self, Acts::ForClaim(request.claim_uid.clone()), move |d| {
            d.allocate_address(&request)
        })
        .await
    }

    pub async fn net_release_claim(&self, claim_uid: String) -> NetAnswer<u32> {
        run(self, Acts::ForClaim(claim_uid.clone()), move |d| {
            d.release_claim(&claim_uid)
        })
        .await
    }

    pub async fn net_prepare_attachment(&self, attachment: Attachment) -> NetAnswer<Hook> {
        run(self, Acts::ForClaim(attachment.claim_uid.clone()), move |d| {
            d.prepare_attachment(&attachment)
        })
        .await
    }

    pub async fn net_configure_link(&self, name: String, addresses: Vec<String>) -> NetAnswer<()> {
        run(self, Acts::OnLink(name.clone()), move |d| {
            d.configure_link(&name, &addresses)
        })
        .await
    }

    pub async fn net_set_egress_rate(&self, name: String, bits_per_second: u64) -> NetAnswer<bool> {
        run(self, Acts::OnLink(name.clone()), move |d| {
            d.set_egress_rate(&name, bits_per_second)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::net::store::LinkRecord;
    use crate::imports::net::types::{IpPool, MacvlanMode};

    /// A driver with `net` granted whose state records one link, created
    /// for claim "a"; nothing here reaches netlink.
    fn granted() -> (tempfile::TempDir, crate::imports::Imports) {
        let dir = tempfile::tempdir().unwrap();
        let driver = NetDriver::new("net.dra.dev", vec!["eth9".into()], dir.path(), "/hook".into()).unwrap();
        driver
            .store
            .update(|d| {
                d.links.push(LinkRecord {
                    name: "dwhofa".into(),
                    claim_uid: "a".into(),
                    parent: "eth9".into(),
                    mac: "02:00:00:00:00:01".into(),
                    attachment: None,
                    attached: None,
                    egress_rate_bps: None,
                });
                Ok(())
            })
            .unwrap();
        let imports = crate::imports::Imports {
            grants: vec![],
            nvml: None,
            net: Some(NetGrant {
                driver: Arc::new(driver),
            }),
        };
        (dir, imports)
    }

    #[tokio::test]
    async fn a_guest_acts_only_for_the_claim_of_the_call() {
        let (_dir, imports) = granted();
        fn refused<T>(r: NetAnswer<T>) -> String {
            match r.expect("no trap") {
                Ok(_) => panic!("the call was let through"),
                Err(e) => e.message,
            }
        }

        // The imports' view of a guest's store during a call for `claim`.
        let mut log = crate::imports::log::GuestLog::new(std::sync::Arc::from("test"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        fn view<'a>(
            imports: &'a crate::imports::Imports,
            log: &'a mut crate::imports::log::GuestLog,
            deadline: std::time::Instant,
            claim: Option<&'a str>,
        ) -> ImportsView<'a> {
            ImportsView {
                imports,
                log,
                deadline,
                claim,
            }
        }

        // During claim b's call: nothing of claim a's.
        let b = view(&imports, &mut log, deadline, Some("b"));
        let macvlan = Macvlan {
            parent: "eth9".into(),
            claim_uid: "a".into(),
            key: "k".into(),
            mode: MacvlanMode::Bridge,
            mtu: None,
            hardware_address: None,
        };
        let text = refused(b.net_create_macvlan(macvlan.clone()).await);
        assert!(
            text.contains("claim \"a\" is not the claim of this call (\"b\")"),
            "{text}"
        );
        refused(b.net_release_claim("a".into()).await);
        refused(
            b.net_allocate_address(AddressRequest {
                parent: "eth9".into(),
                pool: IpPool {
                    subnet: "192.0.2.0/24".into(),
                    range_start: None,
                    range_end: None,
                    gateway: None,
                },
                claim_uid: "a".into(),
                share_id: "s".into(),
                static_address: None,
            })
            .await,
        );
        refused(
            b.net_prepare_attachment(Attachment {
                link: "dwhofa".into(),
                claim_uid: "a".into(),
                pod_interface: "net1".into(),
                addresses: vec![],
                routes: vec![],
            })
            .await,
        );
        let text = refused(b.net_set_egress_rate("dwhofa".into(), 1_000_000).await);
        assert!(
            text.contains("belongs to claim \"a\", not to the claim of this call (\"b\")"),
            "{text}"
        );
        refused(b.net_configure_link("dwhofa".into(), vec![]).await);
        refused(b.net_delete_link("dwhofa".into()).await);

        // Outside any claim's call (init, inventory, on-event): no claim at all.
        let none = view(&imports, &mut log, deadline, None);
        let text = refused(none.net_release_claim("a".into()).await);
        assert!(text.contains("only during its prepare or unprepare"), "{text}");
        refused(none.net_set_egress_rate("dwhofa".into(), 1_000_000).await);

        // During claim a's call, on its own link: done (this one only
        // writes the driver's state).
        let a = view(&imports, &mut log, deadline, Some("a"));
        a.net_set_egress_rate("dwhofa".into(), 1_000_000)
            .await
            .unwrap()
            .unwrap();
        let Some(grant) = &imports.net else { unreachable!() };
        let record = grant.driver.store.read().unwrap().links.remove(0);
        assert_eq!(record.egress_rate_bps, Some(1_000_000));
        let owners = grant.driver.link_owners().unwrap();
        assert_eq!(owners.get("dwhofa").map(String::as_str), Some("a"));
        assert_eq!(owners.get("dwhnone"), None);
    }
}
