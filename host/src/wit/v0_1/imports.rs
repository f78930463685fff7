//! The 0.1 host traits of the capabilities, as adapters: each converts the
//! guest's records into the host's, calls the host-typed capability code in
//! `imports` (`log::GuestLog`, `ImportsView::nvml_*`, `ImportsView::net_*`,
//! where the authorisation is), and converts the answer back. And their
//! linking, with the imports' narrow view of the store (`ImportsView`),
//! never the whole store.

use super::dra::driver::{log, net, nvml, types};
use crate::imports::{Grant, Imports, ImportsView};
use wasmtime::component::{HasData, Linker};

/// A host call's outcome in the guest's records.
fn answer<T, U: From<T>, E, F: From<E>>(r: wasmtime::Result<Result<T, E>>) -> wasmtime::Result<Result<U, F>> {
    Ok(r?.map(U::from).map_err(F::from))
}

impl log::Host for ImportsView<'_> {
    fn log(&mut self, level: log::Level, message: String) {
        self.log.emit(level.into(), message);
    }
}

impl nvml::Host for ImportsView<'_> {
    async fn driver_version(&mut self) -> wasmtime::Result<Result<String, nvml::NvmlError>> {
        answer(self.nvml_driver_version().await)
    }

    async fn cuda_driver_version(&mut self) -> wasmtime::Result<Result<(u32, u32), nvml::NvmlError>> {
        answer(self.nvml_cuda_driver_version().await)
    }

    async fn device_count(&mut self) -> wasmtime::Result<Result<u32, nvml::NvmlError>> {
        answer(self.nvml_device_count().await)
    }

    async fn device_info(&mut self, index: u32) -> wasmtime::Result<Result<nvml::GpuInfo, nvml::NvmlError>> {
        answer(self.nvml_device_info(index).await)
    }

    async fn driver_files(&mut self) -> wasmtime::Result<Result<Vec<nvml::DriverFile>, nvml::NvmlError>> {
        Ok(self
            .nvml_driver_files()
            .await?
            .map(|files| files.into_iter().map(Into::into).collect())
            .map_err(Into::into))
    }

    async fn subscribe(
        &mut self,
        uuids: Vec<String>,
        kinds: Vec<types::GpuEventKind>,
    ) -> wasmtime::Result<Result<(), nvml::NvmlError>> {
        let kinds = kinds.into_iter().map(Into::into).collect();
        answer(self.nvml_subscribe(uuids, kinds).await)
    }
}

impl net::Host for ImportsView<'_> {
    async fn list_links(&mut self) -> wasmtime::Result<Result<Vec<net::Link>, net::NetError>> {
        Ok(self
            .net_list_links()
            .await?
            .map(|links| links.into_iter().map(Into::into).collect())
            .map_err(Into::into))
    }

    async fn create_macvlan(&mut self, spec: net::Macvlan) -> wasmtime::Result<Result<net::Link, net::NetError>> {
        answer(self.net_create_macvlan(spec.into()).await)
    }

    async fn delete_link(&mut self, name: String) -> wasmtime::Result<Result<bool, net::NetError>> {
        answer(self.net_delete_link(name).await)
    }

    async fn allocate_address(
        &mut self,
        request: net::AddressRequest,
    ) -> wasmtime::Result<Result<String, net::NetError>> {
        answer(self.net_allocate_address(request.into()).await)
    }

    async fn release_claim(&mut self, claim_uid: String) -> wasmtime::Result<Result<u32, net::NetError>> {
        answer(self.net_release_claim(claim_uid).await)
    }

    async fn prepare_attachment(
        &mut self,
        attachment: net::Attachment,
    ) -> wasmtime::Result<Result<types::Hook, net::NetError>> {
        answer(self.net_prepare_attachment(attachment.into()).await)
    }

    async fn configure_link(
        &mut self,
        name: String,
        addresses: Vec<String>,
    ) -> wasmtime::Result<Result<(), net::NetError>> {
        answer(self.net_configure_link(name, addresses).await)
    }

    async fn set_egress_rate(
        &mut self,
        name: String,
        bits_per_second: u64,
    ) -> wasmtime::Result<Result<bool, net::NetError>> {
        answer(self.net_set_egress_rate(name, bits_per_second).await)
    }
}

/// What the linked host traits are implemented for: the imports' view of
/// the store.
struct Imported;

impl HasData for Imported {
    type Data<'a> = ImportsView<'a>;
}

pub(crate) fn add_log<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> ImportsView<'_>,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, Imported>(linker, view)
}

pub(crate) fn add_granted<T: Send + 'static>(
    linker: &mut Linker<T>,
    imports: &Imports,
    view: fn(&mut T) -> ImportsView<'_>,
) -> wasmtime::Result<()> {
    if imports.grants(Grant::Nvml) {
        nvml::add_to_linker::<T, Imported>(linker, view)?;
    }
    if imports.grants(Grant::Net) {
        net::add_to_linker::<T, Imported>(linker, view)?;
    }
    Ok(())
}
