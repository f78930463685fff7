//! Parent link health from netlink notifications: events, not polling.
//!
//! One thread per process holds an rtnetlink socket subscribed to the
//! `RTNLGRP_LINK` multicast group. The kernel sends a message on every link
//! change; the monitor reduces each to "operationally up or not" and forwards
//! a `link` event to every driver whose granted parents include the link,
//! only when that state changed (the kernel repeats NEWLINK for unrelated
//! attribute changes). The driver hands it to its guest's `on-event`.

use super::netlink::{self, LinkState};
use crate::model::{Event, LinkEvent};
use futures_util::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The `RTNLGRP_LINK` group as a bind mask (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;

#[derive(Debug)]
struct Subscription {
    parents: Vec<String>,
    sink: mpsc::Sender<Event>,
}

/// Routes link changes to the drivers whose parents they concern.
#[derive(Debug, Default)]
pub struct LinkRouter {
    subscriptions: Mutex<HashMap<String, Subscription>>,
    /// Last state delivered per link name, to forward changes only.
    last: Mutex<HashMap<String, bool>>,
    dropped: std::sync::atomic::AtomicU64,
}

impl LinkRouter {
    pub fn subscribe(&self, driver: &str, parents: Vec<String>, sink: mpsc::Sender<Event>) {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(driver.to_owned(), Subscription { parents, sink });
    }

    /// A link changed (or vanished: `up` false). Returns how many drivers got it.
    pub fn changed(&self, link: &LinkState) -> usize {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.insert(link.name.clone(), link.up) == Some(link.up) {
                return 0;
            }
        }
        let subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for (driver, sub) in subs.iter() {
            if sub.parents.contains(&link.name) && self.send(driver, &sub.sink, link) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Deliver `link`'s current state to one driver, changed or not.
    pub fn deliver_to(&self, driver: &str, link: &LinkState) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(link.name.clone(), link.up);
        let subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sub) = subs.get(driver) {
            self.send(driver, &sub.sink, link);
        }
    }

    fn send(&self, driver: &str, sink: &mpsc::Sender<Event>, link: &LinkState) -> bool {
        let event = Event::Link(LinkEvent {
            name: link.name.clone(),
            index: link.index,
            up: link.up,
        });
        match sink.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(driver, link = %link.name, "link event dropped: the driver's event queue is full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Start the monitor thread. Fails when the netlink socket cannot be
/// opened or subscribed.
pub fn start(router: Arc<LinkRouter>) -> Result<(), netlink::NetlinkError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("netlink-monitor".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(netlink::NetlinkError::Worker {
                        what: "runtime",
                        source: e,
                    }));
                    return;
                }
            };
            rt.block_on(async move {
                let (mut conn, _handle, mut messages) = match rtnetlink::new_connection() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(netlink::NetlinkError::Worker {
                            what: "netlink socket",
                            source: e,
                        }));
                        return;
                    }
                };
                if let Err(e) = conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK)) {
                    let _ = ready_tx.send(Err(netlink::NetlinkError::Worker {
                        what: "subscribing to link notifications",
                        source: e,
                    }));
                    return;
                }
                tokio::spawn(conn);
                let _ = ready_tx.send(Ok(()));
                tracing::info!("watching link state (netlink RTNLGRP_LINK)");
                while let Some((msg, _)) = messages.next().await {
                    let (link, deleted) = match msg.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, false),
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, true),
                        _ => continue,
                    };
                    let mut state = netlink::state_of(&link);
                    if deleted {
                        state.up = false;
                    }
                    let n = router.changed(&state);
                    if n > 0 {
                        tracing::info!(link = %state.name, up = state.up, drivers = n, "parent link state changed");
                    }
                }
                tracing::error!("the netlink monitor ended; link health is no longer updated");
            });
        })
        .map_err(|source| netlink::NetlinkError::Worker {
            what: "starting the monitor thread",
            source,
        })?;
    ready_rx
        .recv()
        .map_err(|_| netlink::NetlinkError::Died("monitor thread died"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, up: bool) -> LinkState {
        LinkState {
            name: name.into(),
            index: 7,
            kind: "dummy".into(),
            mtu: 1500,
            mac: String::new(),
            up,
            parent_index: None,
            addresses: vec![],
        }
    }

    #[test]
    fn only_changes_of_subscribed_parents_are_delivered() {
        let router = LinkRouter::default();
        let (tx, mut rx) = mpsc::channel(8);
        router.subscribe("net.dra.dev", vec!["eth1".into()], tx);
        router.deliver_to("net.dra.dev", &link("eth1", true));
        assert!(matches!(rx.try_recv(), Ok(Event::Link(LinkEvent { up: true, .. }))));
        assert_eq!(router.changed(&link("eth1", true)), 0, "no change");
        assert_eq!(router.changed(&link("eth2", false)), 0, "not a parent");
        assert_eq!(router.changed(&link("eth1", false)), 1);
        match rx.try_recv() {
            Ok(Event::Link(e)) => assert!(!e.up && e.name == "eth1"),
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }
}
