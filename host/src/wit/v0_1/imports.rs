//! The 0.1 host traits of the capabilities, as adapters: each converts the
//! guest's records into the host's, calls the host-typed capability code in
//! `imports` (`log::GuestLog`, `ImportsView::nvml_*`, `ImportsView::net_*`,
//! where the authorisation is), and converts the answer back. And their
//! linking, with the imports' narrow view of the store (`ImportsView`),
//! never the whole store. All of it is shared with 0.2 (`wit::shared`).

use super::dra::driver::{log, net, nvml, types};
use crate::imports::ImportsView;
use crate::wit::shared::answer;

crate::wit::shared::common_host_traits!();

impl nvml::Host for ImportsView<'_> {
    crate::wit::shared::common_nvml_methods!();
}

crate::wit::shared::linking!();
