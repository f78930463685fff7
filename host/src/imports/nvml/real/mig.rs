//! GPU and compute instances through the raw library (nvml-wrapper 0.13
//! has no safe calls for them): each `unsafe` block is one NVML call.

use super::{LibError, MigDevice, MigPlacement, MigProfile, NvmlError, map};
use nvml_wrapper::{Device, Nvml as Lib};
use nvml_wrapper_sys::bindings as sys;
use std::path::Path;

const CAPABILITIES: &str = "/proc/driver/nvidia/capabilities";

fn check(ret: sys::nvmlReturn_t) -> Result<(), NvmlError> {
    nvml_wrapper::error::nvml_try(ret).map_err(map)
}

/// `MIG 1g.10gb` as `1g.10gb`.
fn profile_name(raw: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    let name = String::from_utf8_lossy(&bytes);
    name.strip_prefix("MIG ").unwrap_or(&name).to_owned()
}

/// Every GPU instance profile the GPU has (NVML's profile indexes
/// 0..NVML_GPU_INSTANCE_PROFILE_COUNT; those it does not support are skipped).
fn profile_infos(lib: &Lib, d: &Device<'_>) -> Result<Vec<sys::nvmlGpuInstanceProfileInfo_v2_t>, NvmlError> {
    let mut infos = Vec::new();
    for index in 0..sys::NVML_GPU_INSTANCE_PROFILE_COUNT {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut info: sys::nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
        // NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2).
        info.version = std::mem::size_of::<sys::nvmlGpuInstanceProfileInfo_v2_t>() as u32 | (2 << 24);
        // SAFETY: a device handle of this library, a pointer to a local.
        let ret = unsafe {
            lib.lib()
                .nvmlDeviceGetGpuInstanceProfileInfoV(d.handle(), index, &mut info)
        };
        match check(ret) {
            Ok(()) => infos.push(info),
            Err(NvmlError::NotSupported | NvmlError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(infos)
}

fn placements(lib: &Lib, d: &Device<'_>, profile_id: u32) -> Result<Vec<MigPlacement>, NvmlError> {
    let mut count = 0;
    // SAFETY: a null buffer asks for the count only.
    check(unsafe {
        lib.lib().nvmlDeviceGetGpuInstancePossiblePlacements_v2(
            d.handle(),
            profile_id,
            std::ptr::null_mut(),
            &mut count,
        )
    })?;
    let mut buf = vec![sys::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
    // SAFETY: `buf` holds `count` placements.
    check(unsafe {
        lib.lib()
            .nvmlDeviceGetGpuInstancePossiblePlacements_v2(d.handle(), profile_id, buf.as_mut_ptr(), &mut count)
    })?;
    buf.truncate(count as usize);
    Ok(buf
        .iter()
        .map(|p| MigPlacement {
            start: p.start,
            size: p.size,
        })
        .collect())
}

pub(super) fn profiles(lib: &Lib, d: &Device<'_>) -> Result<Vec<MigProfile>, NvmlError> {
    mig_on(d)?;
    profile_infos(lib, d)?
        .into_iter()
        .map(|p| {
            Ok(MigProfile {
                id: p.id,
                name: profile_name(&p.name),
                slice_count: p.sliceCount,
                memory_bytes: p.memorySizeMB << 20,
                multiprocessors: p.multiprocessorCount,
                placements: placements(lib, d, p.id)?,
            })
        })
        .collect()
}

fn mig_on(d: &Device<'_>) -> Result<(), NvmlError> {
    match d.mig_mode() {
        Ok(m) if m.current == 1 => Ok(()),
        Ok(_) | Err(LibError::NotSupported) => Err(NvmlError::NotSupported),
        Err(e) => Err(map(e)),
    }
}

/// The GPU instances of one profile.
fn instances(
    lib: &Lib,
    d: &Device<'_>,
    p: &sys::nvmlGpuInstanceProfileInfo_v2_t,
) -> Result<Vec<sys::nvmlGpuInstance_t>, NvmlError> {
    let mut buf = vec![std::ptr::null_mut(); p.instanceCount.max(1) as usize];
    let mut count = 0;
    // SAFETY: `buf` holds as many handles as the profile can have instances.
    check(unsafe {
        lib.lib()
            .nvmlDeviceGetGpuInstances(d.handle(), p.id, buf.as_mut_ptr(), &mut count)
    })?;
    buf.truncate(count as usize);
    Ok(buf)
}

pub(super) fn devices(lib: &Lib, d: &Device<'_>, gpu: u32) -> Result<Vec<MigDevice>, NvmlError> {
    mig_on(d)?;
    let minor = d.minor_number().map_err(map)?;
    // (GPU instance, compute instance) -> UUID, from the MIG device handles.
    let mut uuids = std::collections::HashMap::new();
    let max = {
        let mut n = 0;
        // SAFETY: a pointer to a local.
        check(unsafe { lib.lib().nvmlDeviceGetMaxMigDeviceCount(d.handle(), &mut n) })?;
        n
    };
    for i in 0..max {
        let m = match d.mig_device_by_index(i) {
            Ok(m) => m,
            Err(LibError::NotFound | LibError::InvalidArg) => continue,
            Err(e) => return Err(map(e)),
        };
        let (mut gi, mut ci) = (0, 0);
        // SAFETY: a MIG device handle of this library, pointers to locals.
        check(unsafe { lib.lib().nvmlDeviceGetGpuInstanceId(m.handle(), &mut gi) })?;
        // SAFETY: as above.
        check(unsafe { lib.lib().nvmlDeviceGetComputeInstanceId(m.handle(), &mut ci) })?;
        uuids.insert(gi, (ci, m.uuid().map_err(map)?));
    }
    let mut out = Vec::new();
    for p in profile_infos(lib, d)? {
        for gi in instances(lib, d, &p)? {
            // SAFETY: all-zero is a valid value of this plain C struct.
            let mut info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: a GPU instance handle NVML just returned, a pointer to a local.
            check(unsafe { lib.lib().nvmlGpuInstanceGetInfo(gi, &mut info) })?;
            // A GPU instance without a compute instance is not usable: left out.
            let Some((ci, uuid)) = uuids.get(&info.id).cloned() else {
                continue;
            };
            out.push(MigDevice {
                gpu,
                gpu_instance_id: info.id,
                compute_instance_id: ci,
                profile_id: info.profileId,
                placement: MigPlacement {
                    start: info.placement.start,
                    size: info.placement.size,
                },
                uuid,
                device_nodes: super::mig_cap_nodes(Path::new(CAPABILITIES), minor, info.id, ci),
            });
        }
    }
    Ok(out)
}

/// The compute instance profile spanning a whole GPU instance of `slices`.
fn full_compute_profile(lib: &Lib, gi: sys::nvmlGpuInstance_t, slices: u32) -> Result<u32, NvmlError> {
    (0..sys::NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
        .rev()
        .filter_map(|index| compute_profile(lib, gi, index))
        .find(|info| info.sliceCount == slices)
        .map(|info| info.id)
        .ok_or(NvmlError::NotSupported)
}

/// The compute instance profile `index` of a GPU instance (shared
/// engines), or `None` when the GPU instance has no such profile.
fn compute_profile(lib: &Lib, gi: sys::nvmlGpuInstance_t, index: u32) -> Option<sys::nvmlComputeInstanceProfileInfo_t> {
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut info: sys::nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a GPU instance handle of this library, a pointer to a local.
    let ret = unsafe {
        lib.lib().nvmlGpuInstanceGetComputeInstanceProfileInfo(
            gi,
            index,
            sys::NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
            &mut info,
        )
    };
    check(ret).ok().map(|()| info)
}

/// A GPU instance at `placement` with one compute instance spanning it;
/// returns the GPU instance's ID.
pub(super) fn create(lib: &Lib, d: &Device<'_>, profile_id: u32, placement: MigPlacement) -> Result<u32, NvmlError> {
    mig_on(d)?;
    let profile = profile_infos(lib, d)?
        .into_iter()
        .find(|p| p.id == profile_id)
        .ok_or(NvmlError::NotFound)?;
    let at = sys::nvmlGpuInstancePlacement_t {
        start: placement.start,
        size: placement.size,
    };
    let mut gi = std::ptr::null_mut();
    // SAFETY: a device handle of this library, pointers to locals.
    check(unsafe {
        lib.lib()
            .nvmlDeviceCreateGpuInstanceWithPlacement(d.handle(), profile_id, &at, &mut gi)
    })?;
    let made = full_compute_profile(lib, gi, profile.sliceCount).and_then(|ci_profile| {
        let mut ci = std::ptr::null_mut();
        // SAFETY: the GPU instance just created, a pointer to a local.
        check(unsafe { lib.lib().nvmlGpuInstanceCreateComputeInstance(gi, ci_profile, &mut ci) })
    });
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the GPU instance just created, a pointer to a local.
    let id = check(unsafe { lib.lib().nvmlGpuInstanceGetInfo(gi, &mut info) }).map(|()| info.id);
    if let Err(e) = made.and(id.map(|_| ())) {
        // No half-made instance left behind.
        // SAFETY: the GPU instance just created, no compute instance in it.
        let _ = unsafe { lib.lib().nvmlGpuInstanceDestroy(gi) };
        return Err(e);
    }
    id
}

/// Destroy a GPU instance's compute instances, then the GPU instance.
pub(super) fn destroy(lib: &Lib, d: &Device<'_>, gpu_instance_id: u32) -> Result<(), NvmlError> {
    mig_on(d)?;
    let mut gi = std::ptr::null_mut();
    // SAFETY: a device handle of this library, a pointer to a local.
    match check(unsafe {
        lib.lib()
            .nvmlDeviceGetGpuInstanceById(d.handle(), gpu_instance_id, &mut gi)
    }) {
        Ok(()) => {}
        Err(NvmlError::NotFound) => return Err(NvmlError::NotFound),
        Err(e) => return Err(e),
    }
    for index in 0..sys::NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        let Some(info) = compute_profile(lib, gi, index) else {
            continue;
        };
        let mut cis = vec![std::ptr::null_mut(); info.instanceCount.max(1) as usize];
        let mut count = 0;
        // SAFETY: `cis` holds as many handles as the profile can have instances.
        check(unsafe {
            lib.lib()
                .nvmlGpuInstanceGetComputeInstances(gi, info.id, cis.as_mut_ptr(), &mut count)
        })?;
        for &ci in cis.iter().take(count as usize) {
            // SAFETY: a compute instance handle NVML just returned.
            check(unsafe { lib.lib().nvmlComputeInstanceDestroy(ci) })?;
        }
    }
    // SAFETY: a GPU instance handle of this library, its compute instances gone.
    check(unsafe { lib.lib().nvmlGpuInstanceDestroy(gi) })
}
