//! NVIDIA Management Library access through the host (feature `nvml`; the
//! operator grants it with `grants = ["nvml"]`).
//!
//! Every function fails with an [`Error`] that says which call failed and
//! why, and converts into the SDK's [`crate::Error`] with `?`. Built
//! natively (unit tests) there is no host: every call is `NotAvailable`.

use crate::GpuEventKind;
use std::fmt;

pub use crate::bindings::dra::driver::nvml::{
    DriverFile, DriverFileKind, GpuInfo, MigDevice, MigPlacement, MigProfile, NvmlError as Reason, PciInfo,
};

/// An NVML call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What was asked, e.g. `GPU 3`.
    pub call: String,
    pub reason: Reason,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self.reason {
            Reason::NotAvailable => {
                "NVML not available on this node (is the NVIDIA driver installed and libnvidia-ml.so.1 loadable?)"
            }
            Reason::NotSupported => "not supported by this GPU or driver",
            Reason::NotFound => "not found",
            Reason::InUse => "in use",
            Reason::Failed => "NVML call failed",
        };
        write!(f, "{}: {reason}", self.call)
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        let kind = match e.reason {
            Reason::NotAvailable | Reason::NotFound => crate::ErrorKind::Unavailable,
            Reason::NotSupported => crate::ErrorKind::Unsupported,
            Reason::InUse => crate::ErrorKind::Busy,
            Reason::Failed => crate::ErrorKind::Internal,
        };
        crate::Error::new(kind, e.to_string())
    }
}

/// The driver version, e.g. `580.159.04`.
pub fn driver_version() -> Result<String, Error> {
    imp::driver_version().map_err(|reason| fail("driver version", reason))
}

/// The CUDA driver API version as (major, minor), e.g. (13, 0).
pub fn cuda_driver_version() -> Result<(u32, u32), Error> {
    imp::cuda_driver_version().map_err(|reason| fail("CUDA driver version", reason))
}

/// Every GPU of the node, in index order.
pub fn gpus() -> Result<Vec<GpuInfo>, Error> {
    let count = imp::device_count().map_err(|reason| fail("device count", reason))?;
    (0..count)
        .map(|index| imp::device_info(index).map_err(|reason| fail(&format!("GPU {index}"), reason)))
        .collect()
}

/// The driver's user-space libraries, tools and firmware, found by the host
/// under the driver root the operator configured.
pub fn driver_files() -> Result<Vec<DriverFile>, Error> {
    imp::driver_files().map_err(|reason| fail("driver files", reason))
}

/// Deliver these kinds of events for these GPUs (by UUID) to
/// [`Driver::on_event`](crate::Driver::on_event). Replaces any earlier
/// subscription of this driver.
pub fn subscribe(uuids: &[String], kinds: &[GpuEventKind]) -> Result<(), Error> {
    imp::subscribe(uuids, kinds).map_err(|reason| fail("subscribing to GPU events", reason))
}

/// The MIG GPU instance profiles of GPU `gpu`, with where each can be
/// placed (`NotSupported` when its MIG mode is off).
pub fn mig_profiles(gpu: u32) -> Result<Vec<MigProfile>, Error> {
    imp::mig_profiles(gpu).map_err(|reason| fail(&format!("MIG profiles of GPU {gpu}"), reason))
}

/// The MIG devices (GPU instances with their compute instance) that exist
/// on GPU `gpu` now.
pub fn mig_devices(gpu: u32) -> Result<Vec<MigDevice>, Error> {
    imp::mig_devices(gpu).map_err(|reason| fail(&format!("MIG devices of GPU {gpu}"), reason))
}

/// Create a GPU instance of profile `profile_id` at `placement` on GPU
/// `gpu`, with one compute instance spanning it. `InUse` when the placement
/// overlaps an existing instance or the GPU is busy.
pub fn create_mig_device(gpu: u32, profile_id: u32, placement: MigPlacement) -> Result<MigDevice, Error> {
    imp::create_mig_device(gpu, profile_id, placement).map_err(|reason| {
        fail(
            &format!(
                "creating a MIG device of profile {profile_id} at memory slices {}..{} of GPU {gpu}",
                placement.start,
                placement.start + placement.size
            ),
            reason,
        )
    })
}

/// Destroy GPU instance `gpu_instance_id` of GPU `gpu` and its compute
/// instances. `NotFound` when it is already gone.
pub fn destroy_mig_device(gpu: u32, gpu_instance_id: u32) -> Result<(), Error> {
    imp::destroy_mig_device(gpu, gpu_instance_id).map_err(|reason| {
        fail(
            &format!("destroying MIG GPU instance {gpu_instance_id} of GPU {gpu}"),
            reason,
        )
    })
}

fn fail(call: &str, reason: Reason) -> Error {
    Error {
        call: call.to_owned(),
        reason,
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    pub use crate::bindings::dra::driver::nvml::{
        create_mig_device, cuda_driver_version, destroy_mig_device, device_count, device_info, driver_files,
        driver_version, mig_devices, mig_profiles, subscribe,
    };
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{DriverFile, GpuInfo, MigDevice, MigPlacement, MigProfile, Reason};
    use crate::GpuEventKind;

    pub fn driver_version() -> Result<String, Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn cuda_driver_version() -> Result<(u32, u32), Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn device_count() -> Result<u32, Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn device_info(_: u32) -> Result<GpuInfo, Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn driver_files() -> Result<Vec<DriverFile>, Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn subscribe(_: &[String], _: &[GpuEventKind]) -> Result<(), Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn mig_profiles(_: u32) -> Result<Vec<MigProfile>, Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn mig_devices(_: u32) -> Result<Vec<MigDevice>, Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn create_mig_device(_: u32, _: u32, _: MigPlacement) -> Result<MigDevice, Reason> {
        Err(Reason::NotAvailable)
    }

    pub fn destroy_mig_device(_: u32, _: u32) -> Result<(), Reason> {
        Err(Reason::NotAvailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_which_call_and_map_to_kinds() {
        let e = gpus().unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("device count"));
        let sdk: crate::Error = e.into();
        assert_eq!(sdk.kind, crate::ErrorKind::Unavailable);
        assert!(sdk.message.contains("libnvidia-ml.so.1"), "{sdk}");
        let e: crate::Error = fail("GPU 3", Reason::NotSupported).into();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                crate::ErrorKind::Unsupported,
                "GPU 3: not supported by this GPU or driver"
            )
        );
        let e: crate::Error = create_mig_device(1, 19, MigPlacement { start: 3, size: 1 })
            .unwrap_err()
            .into();
        assert!(
            e.message
                .starts_with("creating a MIG device of profile 19 at memory slices 3..4 of GPU 1: "),
            "{e}"
        );
        let e: crate::Error = fail("x", Reason::InUse).into();
        assert_eq!((e.kind, e.message.as_str()), (crate::ErrorKind::Busy, "x: in use"));
        assert_eq!(destroy_mig_device(0, 2).unwrap_err().reason, Reason::NotAvailable);
        assert_eq!(mig_profiles(0).unwrap_err().call, "MIG profiles of GPU 0");
        assert_eq!(mig_devices(0).unwrap_err().call, "MIG devices of GPU 0");
    }
}
