//! A driver after `init`, called the way the host calls the component.
//!
//! The component's exports go through an [`Instance`]: the driver config is
//! parsed from the host's JSON here, and each claim's opaque configs are
//! merged and deserialized here, before the driver sees them. A unit test
//! drives the same code natively, so what it tests is what the host gets
//! (only the WIT conversion and the host's own checks are left out).

use crate::{AllocatedClaim, ClaimRef, DeviceHealth, Driver, Error, Event, InitContext, Pool, PreparedClaim, Result};

/// A driver after a successful `init`.
///
/// ```
/// # use dra_driver_sdk::*;
/// struct Nothing;
/// impl Driver for Nothing {
///     type Config = NoParameters;
///     type ClaimConfig = NoParameters;
///     fn init(_: &InitContext, _: NoParameters) -> Result<Self> { Ok(Nothing) }
///     fn inventory(&self) -> Result<Vec<Pool>> { Ok(vec![]) }
///     fn prepare(&self, _: Claim<NoParameters>) -> Result<PreparedClaim> { Ok(PreparedClaim::default()) }
/// }
/// let e = Instance::<Nothing>::start("node-a", r#"{"devices": 4}"#).err().unwrap();
/// assert_eq!(e.kind, ErrorKind::InvalidConfig);
/// assert!(e.message.contains("devices"));
/// ```
pub struct Instance<D> {
    driver: D,
}

/// Without asking `D` for `Debug`, so that a test can `unwrap_err()`.
impl<D> std::fmt::Debug for Instance<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("driver", &std::any::type_name::<D>())
            .finish()
    }
}

impl<D: Driver> Instance<D> {
    /// What the component's `init` does: parse `ctx.config` (JSON; empty
    /// means `{}`) into the driver's `Config`, then call [`Driver::init`].
    pub fn init(ctx: InitContext) -> Result<Self> {
        let text = if ctx.config.bytes().all(|b| b.is_ascii_whitespace()) {
            "{}"
        } else {
            ctx.config.as_str()
        };
        let config = serde_json::from_str(text).map_err(|e| Error::invalid_config(format!("driver config: {e}")))?;
        Ok(Self {
            driver: D::init(&ctx, config)?,
        })
    }

    /// [`Instance::init`] for tests: the driver `example.dra.dev` on `node`,
    /// configured with `config` (the JSON the host makes of `[drivers.config]`).
    pub fn start(node: &str, config: &str) -> Result<Self> {
        Self::init(InitContext {
            driver_name: "example.dra.dev".to_owned(),
            node_name: node.to_owned(),
            config: config.to_owned(),
        })
    }

    pub fn driver(&self) -> &D {
        &self.driver
    }

    pub fn inventory(&self) -> Result<Vec<Pool>> {
        self.driver.inventory()
    }

    /// What the component's `prepare` does: resolve the opaque configs of
    /// each device, then call [`Driver::prepare`].
    pub fn prepare(&self, claim: AllocatedClaim) -> Result<PreparedClaim> {
        self.driver.prepare(claim.resolve()?)
    }

    pub fn unprepare(&self, claim: &ClaimRef, state: &[u8]) -> Result<()> {
        self.driver.unprepare(claim, state)
    }

    pub fn on_event(&self, event: Event) -> Result<Vec<DeviceHealth>> {
        self.driver.on_event(event)
    }
}
