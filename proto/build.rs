//! Compiles the kubelet API protos in this directory with protox (a pure-Rust
//! protobuf compiler, so no `protoc` is needed on the build machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "pluginregistration.proto",
        "dra_v1.proto",
        "dra_v1beta1.proto",
        "dra_health_v1.proto",
        "dra_health_v1alpha1.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
