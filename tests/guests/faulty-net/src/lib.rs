//! A hostile `net` guest for the host's end-to-end tests (tests/e2e/net.rs).
//! It prepares its own claims as a minimal macvlan guest would, with one
//! macvlan per claim on the configured parent and no container edits. A
//! claim named after another claim's UID makes it try to act for that
//! claim through the `net` import, which the host must refuse:
//!
//! | claim name                 | prepare calls                                             |
//! |----------------------------|-----------------------------------------------------------|
//! | `release-<victim uid>`     | `release-claim(<victim uid>)`, which would delete the victim's link |
//! | `macvlan-for-<victim uid>` | `create-macvlan` recorded for the victim                  |
//! | anything else              | `create-macvlan` for itself                               |

use dra_driver_sdk::net::{self, Macvlan, MacvlanMode};
use dra_driver_sdk::{
    Claim, ClaimRef, Device, Driver, InitContext, NoParameters, Pool, PreparedClaim, PreparedDevice, Result,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The granted parent NIC the macvlans go on.
    parent: String,
    /// Pool of the devices `nic-0` … `nic-3`.
    pool: String,
}

pub struct FaultyNet {
    config: Config,
}

impl Driver for FaultyNet {
    type Config = Config;
    type ClaimConfig = NoParameters;

    fn init(_ctx: &InitContext, config: Config) -> Result<Self> {
        Ok(Self { config })
    }

    fn inventory(&self) -> Result<Vec<Pool>> {
        let devices = (0..4).map(|i| Device::new(format!("nic-{i}"))).collect();
        Ok(vec![Pool::new(&self.config.pool, devices)])
    }

    fn prepare(&self, claim: Claim<NoParameters>) -> Result<PreparedClaim> {
        let name = &claim.claim.name;
        if let Some(victim) = name.strip_prefix("release-") {
            net::release_claim(victim)?;
        } else {
            let for_claim = name.strip_prefix("macvlan-for-").unwrap_or(&claim.claim.uid);
            net::create_macvlan(&Macvlan {
                parent: self.config.parent.clone(),
                claim_uid: for_claim.to_owned(),
                key: "k".into(),
                mode: MacvlanMode::Bridge,
                mtu: None,
                hardware_address: None,
            })?;
        }
        Ok(PreparedClaim {
            devices: claim.devices.iter().map(PreparedDevice::new).collect(),
            state: vec![],
        })
    }

    fn unprepare(&self, claim: &ClaimRef, _state: &[u8]) -> Result<()> {
        net::release_claim(&claim.uid)?;
        Ok(())
    }
}

dra_driver_sdk::export_driver!(FaultyNet);
