//! The binary's subcommands other than `run` (which is the library's
//! [`dra_wasm_host::node::run`]). They print to stdout and report with
//! `anyhow`; everything they assemble comes from the library.

pub(crate) mod call;
#[cfg(feature = "demo")]
mod demo;
pub(crate) mod guest;
pub(crate) mod harness;
pub(crate) mod hook;
pub(crate) mod probe;

/// `demo`: the real binary in node mode, driven by the in-tree test kubelet.
/// It links the test-support crate, so the shipped binary is built without
/// it (the `demo` feature).
pub(crate) async fn demo(keep: bool) -> anyhow::Result<()> {
    #[cfg(feature = "demo")]
    return demo::run(keep).await;
    #[cfg(not(feature = "demo"))]
    {
        let _ = keep;
        anyhow::bail!(
            "this binary was built without the demo (it links the test kubelet): run it from a checkout with `cargo demo` (`cargo run --features demo -- demo`)"
        )
    }
}
