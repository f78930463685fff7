//! Generated gRPC code (tonic + prost) for the kubelet APIs a DRA plugin
//! serves: plugin registration, DRAPlugin v1/v1beta1 and DRAResourceHealth
//! v1/v1alpha1. The `.proto` files beside this crate are the source; nothing
//! hand-written lives here.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `pluginregistration.Registration`.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// `k8s.io.kubelet.pkg.apis.dra.*.DRAPlugin`.
pub mod dra {
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
    }
}

/// `v1.DRAResourceHealth` and `v1alpha1.DRAResourceHealth`.
pub mod health {
    pub mod v1 {
        tonic::include_proto!("v1");
    }
    pub mod v1alpha1 {
        tonic::include_proto!("v1alpha1");
    }
}

/// The `supported_versions` strings a DRA plugin advertises in `GetInfo`.
pub mod services {
    pub const DRA_PLUGIN_V1: &str = "v1.DRAPlugin";
    pub const DRA_PLUGIN_V1BETA1: &str = "v1beta1.DRAPlugin";
    pub const HEALTH_V1: &str = "v1.DRAResourceHealth";
    pub const HEALTH_V1ALPHA1: &str = "v1alpha1.DRAResourceHealth";
    /// `PluginInfo.type` of a DRA plugin.
    pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
}

/// A gRPC channel over a Unix socket, as the kubelet dials plugins
/// (`unix:<path>`, no TLS). The URI is required by tonic but unused.
pub async fn connect_uds(
    path: impl AsRef<std::path::Path>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.as_ref().to_owned();
    tonic::transport::Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
