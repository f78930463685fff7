//! The component side (wasm32 only): the generic `device-driver` export
//! that [`export_driver!`](crate::export_driver) instantiates for a driver.

use crate::bindings::dra::driver::types as wit;
use crate::bindings::exports::dra::driver::device_driver::Guest;
use crate::{Driver, Error, ErrorKind, Instance};
use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

/// The driver type and the package identity [`export_driver!`](crate::export_driver) registers.
pub trait Package: 'static {
    type Driver: Driver;
    const NAME: &'static str;
    const VERSION: &'static str;
}

/// The `device-driver` export for the driver of `P`.
pub struct Export<P>(PhantomData<P>);

thread_local! {
    /// The instance `init` created (an `Instance<P::Driver>`); one per
    /// component instance, which the host never calls concurrently.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with<D: Driver, T>(f: impl FnOnce(&Instance<D>) -> crate::Result<T>) -> Result<T, wit::DriverError> {
    INSTANCE.with_borrow(
        |slot| match slot.as_ref().and_then(|i| i.downcast_ref::<Instance<D>>()) {
            Some(instance) => f(instance).map_err(driver_error),
            None => Err(driver_error(Error::internal("init was not called"))),
        },
    )
}

impl<P: Package> Guest for Export<P> {
    fn init(ctx: wit::InitContext) -> Result<wit::DriverInfo, wit::DriverError> {
        std::panic::set_hook(Box::new(|info| crate::log::error(&format!("panic: {info}"))));
        let instance = Instance::<P::Driver>::init(ctx).map_err(driver_error)?;
        INSTANCE.set(Some(Box::new(instance)));
        Ok(wit::DriverInfo {
            name: P::NAME.to_owned(),
            version: P::VERSION.to_owned(),
        })
    }

    fn inventory() -> Result<Vec<wit::Pool>, wit::DriverError> {
        with::<P::Driver, _>(|i| i.inventory())
    }

    fn prepare(claim: wit::Claim) -> Result<wit::PreparedClaim, wit::DriverError> {
        with::<P::Driver, _>(|i| i.prepare(claim))
    }

    fn unprepare(claim: wit::ClaimRef, state: Vec<u8>) -> Result<(), wit::DriverError> {
        with::<P::Driver, _>(|i| i.unprepare(&claim, &state))
    }

    fn on_event(event: wit::Event) -> Result<Vec<wit::DeviceHealth>, wit::DriverError> {
        with::<P::Driver, _>(|i| i.on_event(event))
    }
}

fn driver_error(e: Error) -> wit::DriverError {
    wit::DriverError {
        kind: match e.kind {
            ErrorKind::InvalidConfig => wit::ErrorKind::InvalidConfig,
            ErrorKind::InvalidClaim => wit::ErrorKind::InvalidClaim,
            ErrorKind::Unavailable => wit::ErrorKind::Unavailable,
            ErrorKind::Busy => wit::ErrorKind::Busy,
            ErrorKind::Unsupported => wit::ErrorKind::Unsupported,
            ErrorKind::Internal => wit::ErrorKind::Internal,
        },
        message: e.message,
    }
}
