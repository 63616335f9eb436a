//! Picking a compute device by name, at run time.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// Backends this build can run on, by the names the CLI and tests use.
pub fn available() -> &'static [&'static str] {
    if cfg!(feature = "wgpu") {
        &["cpu", "wgpu"]
    } else {
        &["cpu"]
    }
}

/// `cpu`: burn's pure-Rust `flex` backend. `wgpu`: the default wgpu adapter (Vulkan, Metal, DX12;
/// Mesa's lavapipe where no GPU is present).
pub fn by_name(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        other => Err(Error::Backend(format!(
            "unknown backend {other:?} (this build has: {})",
            available().join(", ")
        ))),
    }
}
