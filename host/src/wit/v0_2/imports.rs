//! The 0.2 host traits of the capabilities, as adapters: each converts the
//! guest's records into the host's, calls the host-typed capability code in
//! `imports` (`log::GuestLog`, `ImportsView::nvml_*`, `ImportsView::net_*`,
//! where the authorisation is), and converts the answer back. And their
//! linking, with the imports' narrow view of the store (`ImportsView`),
//! never the whole store. What 0.1 has too is shared with it (`wit::shared`); MIG is new.

use super::dra::driver::{log, net, nvml, types};
use crate::imports::ImportsView;
use crate::wit::shared::answer;

crate::wit::shared::common_host_traits!();

impl nvml::Host for ImportsView<'_> {
    crate::wit::shared::common_nvml_methods!();

    async fn mig_profiles(&mut self, gpu: u32) -> wasmtime::Result<Result<Vec<nvml::MigProfile>, nvml::NvmlError>> {
        Ok(self
            .nvml_mig_profiles(gpu)
            .await?
            .map(|profiles| profiles.into_iter().map(Into::into).collect())
            .map_err(Into::into))
    }

    async fn mig_devices(&mut self, gpu: u32) -> wasmtime::Result<Result<Vec<nvml::MigDevice>, nvml::NvmlError>> {
        Ok(self
            .nvml_mig_devices(gpu)
            .await?
            .map(|devices| devices.into_iter().map(Into::into).collect())
            .map_err(Into::into))
    }

    async fn create_mig_device(
        &mut self,
        gpu: u32,
        profile_id: u32,
        placement: nvml::MigPlacement,
    ) -> wasmtime::Result<Result<nvml::MigDevice, nvml::NvmlError>> {
        answer(self.nvml_create_mig_device(gpu, profile_id, placement.into()).await)
    }

    async fn destroy_mig_device(
        &mut self,
        gpu: u32,
        gpu_instance_id: u32,
    ) -> wasmtime::Result<Result<(), nvml::NvmlError>> {
        answer(self.nvml_destroy_mig_device(gpu, gpu_instance_id).await)
    }
}

crate::wit::shared::linking!();
