//! The process-wide registry of drivers granted `net`, and the netlink
//! link monitor that feeds their guests' `on-event`.

use super::*;
use crate::model::Event;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Process-wide network access: the drivers granted `net` and the link
/// monitor that feeds their guests' `on-event`.
#[derive(Debug, Default)]
pub struct Net {
    drivers: HashMap<String, Arc<NetDriver>>,
    router: Arc<monitor::LinkRouter>,
    monitor_started: Mutex<bool>,
}

impl Net {
    pub fn new(drivers: Vec<NetDriver>) -> Arc<Self> {
        Arc::new(Self {
            drivers: drivers.into_iter().map(|d| (d.driver.clone(), Arc::new(d))).collect(),
            router: Arc::default(),
            monitor_started: Mutex::new(false),
        })
    }

    pub fn driver(&self, name: &str) -> Option<&Arc<NetDriver>> {
        self.drivers.get(name)
    }

    pub fn router(&self) -> &Arc<monitor::LinkRouter> {
        &self.router
    }

    /// Deliver `driver`'s parents' link events to `sink`, starting the
    /// netlink monitor at the first call; the current state of each parent
    /// is delivered at once, so health is right from the start.
    pub fn watch(&self, driver: &str, sink: mpsc::Sender<Event>) -> Result<(), NetOpError> {
        let Some(d) = self.drivers.get(driver) else {
            return Err(NetOpError::Denied(format!("driver {driver} is not granted net")));
        };
        {
            let mut started = self.monitor_started.lock().unwrap_or_else(|p| p.into_inner());
            if !*started {
                monitor::start(Arc::clone(&self.router))?;
                *started = true;
            }
        }
        self.router.subscribe(driver, d.parents.clone(), sink);
        let links = netlink::run(None, |h| async move { netlink::list(&h).await })?;
        for l in links.iter().filter(|l| d.parents.contains(&l.name)) {
            self.router.deliver_to(driver, l);
        }
        Ok(())
    }
}
