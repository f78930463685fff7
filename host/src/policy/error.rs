//! Why the policy refused a guest's answer: the [`PolicyError`] the kubelet
//! and the claim's Event show, and the [`Rule`] that refused it (the key an
//! operator would change).

use super::*;

/// The part of the policy that refused an output: the key an operator
/// would change, or a rule of the host's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Devices must be the claim's, each once, and so must the links the
    /// host created that an answer hands to containers.
    Allocation,
    /// Fixed size bounds ([`bounds`]).
    Bounds,
    /// Output a runtime or the API server could not use (relative paths,
    /// invalid names, …).
    Format,
    DeviceNodes,
    MountHostPaths,
    MountRwHostPaths,
    MountTypes,
    MountOptions,
    HookPaths,
    AllowNetDevices,
    NetHostInterfaces,
    CdiDevices,
    MaxCdiSpecBytes,
    /// A node resource the inventory declares for a device the claim was
    /// not allocated (0.2 guests; `ownership`).
    Ownership,
}

impl Rule {
    /// The policy key (or `allocation`, `bounds`, `format`): log text and
    /// the `rule` label of `dra_host_policy_rejections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Allocation => "allocation",
            Rule::Bounds => "bounds",
            Rule::Format => "format",
            Rule::DeviceNodes => "device_nodes",
            Rule::MountHostPaths => "mount_host_paths",
            Rule::MountRwHostPaths => "mount_rw_host_paths",
            Rule::MountTypes => "mount_types",
            Rule::MountOptions => "mount_options",
            Rule::HookPaths => "hook_paths",
            Rule::AllowNetDevices => "allow_net_devices",
            Rule::NetHostInterfaces => "net_host_interfaces",
            Rule::CdiDevices => "cdi_devices",
            Rule::MaxCdiSpecBytes => "max_cdi_spec_bytes",
            Rule::Ownership => "ownership",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a guest's answer was refused. Guest-chosen names in it are bounded
/// and escaped ([`crate::guest_text`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("guest prepared device {pool}/{device}{}, which is not allocated to this claim for this driver", share(.share_id))]
    NotAllocated {
        pool: String,
        device: String,
        share_id: Option<String>,
    },
    #[error("guest prepared device {pool}/{device}{} more than once", share(.share_id))]
    Duplicate {
        pool: String,
        device: String,
        share_id: Option<String>,
    },
    #[error("guest did not prepare allocated device {pool}/{device}{}", share(.share_id))]
    Missing {
        pool: String,
        device: String,
        share_id: Option<String>,
    },
    #[error("guest returned {size} bytes of state; at most {} are kept", bounds::STATE_BYTES)]
    StateTooLarge { size: usize },
    /// One field of one prepared device broke a rule.
    #[error("device {pool}/{device}: {field}: {reason} (policy: {rule})")]
    Refused {
        pool: String,
        device: String,
        /// Where in the device's output, as in the CDI spec (`deviceNodes[0]`).
        field: String,
        rule: Rule,
        reason: String,
    },
}

impl PolicyError {
    /// The rule that refused the output.
    pub fn rule(&self) -> Rule {
        match self {
            PolicyError::NotAllocated { .. } | PolicyError::Duplicate { .. } | PolicyError::Missing { .. } => {
                Rule::Allocation
            }
            PolicyError::StateTooLarge { .. } => Rule::Bounds,
            PolicyError::Refused { rule, .. } => *rule,
        }
    }
}

pub(super) fn share(id: &Option<String>) -> String {
    id.as_deref().map(|s| format!(" (share {s})")).unwrap_or_default()
}
