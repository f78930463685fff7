//! The kubelet APIs a DRA plugin serves, as both ends use them: generated
//! gRPC code (tonic + prost) for plugin registration, DRAPlugin v1/v1beta1
//! and DRAResourceHealth v1/v1alpha1 (the `.proto` files beside this crate
//! are the source), how a client dials a plugin's Unix socket, and
//! [`wire`]: the HTTP/2 `:authority` fix-up that the host serves behind and
//! the test kubelet sends with.

pub mod wire;

/// `pluginregistration.Registration`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// `k8s.io.kubelet.pkg.apis.dra.*.DRAPlugin`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod dra {
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
    }
}

/// `v1.DRAResourceHealth` and `v1alpha1.DRAResourceHealth`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
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

/// A gRPC channel over a Unix socket, as kubelets since 1.34 dial the DRA
/// socket (`grpc.NewClient("unix:" + path)`, no TLS): its requests carry
/// `:authority: localhost`, as grpc-go's `unix` resolver sends. For the
/// kubelet's other dials see [`wire::connect_uds_with_authority`].
pub async fn connect_uds(
    path: impl AsRef<std::path::Path>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.as_ref().to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
