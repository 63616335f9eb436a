//! Picking a compute device by name, at run time.

use burn::tensor::{Device, FloatDType};

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
/// Mesa's lavapipe where no GPU is present). `wgpu:N`: the N-th discrete GPU (from 0), for one
/// worker per GPU.
pub fn by_name(name: &str) -> Result<Device> {
    match name.split_once(':') {
        #[cfg(feature = "wgpu")]
        Some(("wgpu", n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| Error::Backend(format!("{name:?}: the device is a number (wgpu:0, wgpu:1, …)")))?;
            return Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(n)));
        }
        Some(_) => {
            return Err(Error::Backend(format!(
                "{name:?}: only the wgpu backend has numbered devices (cpu runs on every core)"
            )));
        }
        None => {}
    }
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

/// Compute precisions by the names the CLI and API use.
pub const DTYPES: &[&str] = &["f32", "f16", "bf16"];

/// [`by_name`], with floats computed in `dtype` (`f32`, `f16` or `bf16`). bf16 is for CPUs
/// with AMX or AVX512-BF16: conv and linear layers multiply bf16 weights and bf16-rounded activations with f32
/// sums; everything else stays f32. f16 is for GPUs: the device's
/// default float type is set before any tensor exists, so weights, activations and every tensor
/// the models make on the way share it. Refused where the device has no f16 arithmetic (burn's
/// CPU backend converts f16 to and from f32 around most ops, which is slower than f32 itself).
///
/// burn keeps these settings per physical device for the life of the process: the first call
/// for a device decides, and a later call asking for another precision on it is an error.
pub fn open(name: &str, dtype: &str) -> Result<Device> {
    let mut device = by_name(name)?;
    if name == "cpu" && matches!(dtype, "f32" | "bf16") {
        // The CPU computes activations in f32 either way; bf16 is the conv/linear weights' type
        // and the AMX kernels' (see `ops::prepare_weights`), chosen for every load after this.
        let bf16 = dtype == "bf16";
        if bf16 && !crate::ops::cpu_bf16_available() {
            return Err(Error::Backend(
                "bf16 on the cpu backend needs AMX-BF16 (Intel Xeon 4th generation or later, with the \
                 Linux permission for tile data) or AVX512-BF16 (AMD Zen 4 and later, Intel Cooper \
                 Lake); this CPU computes in f32 (--dtype f32)"
                    .into(),
            ));
        }
        let routes = crate::ops::Routes::current();
        crate::cpu::bf16_on_tiles(routes.cpu_amx);
        if routes.cpu_bf16 != bf16 {
            crate::ops::Routes {
                cpu_bf16: bf16,
                ..routes
            }
            .set();
        }
    }
    let want = match dtype {
        "f32" => FloatDType::F32,
        "bf16" if name == "cpu" => FloatDType::F32,
        "bf16" => {
            return Err(Error::Backend(
                "bf16 is the cpu backend's low precision (AMX); GPUs compute in f16 (--dtype f16)".into(),
            ));
        }
        "f16" if name != "cpu" => FloatDType::F16,
        "f16" => {
            return Err(Error::Backend(
                "f16 is for GPUs: the cpu backend computes in f32".into(),
            ));
        }
        other => {
            return Err(Error::Backend(format!(
                "unknown dtype {other:?} (one of {})",
                DTYPES.join(", ")
            )));
        }
    };
    // the adapter is looked for here; a numbered GPU that is not there panics in cubecl, which
    // becomes this error (its panic message kept quiet: the error says it)
    let numbered = name.contains(':');
    let hook = numbered.then(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        hook
    });
    let supported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.supports_dtype(want)));
    if let Some(hook) = hook {
        std::panic::set_hook(hook);
    }
    let supported =
        supported.map_err(|_| Error::Backend(format!("{name}: no such GPU (wgpu numbers discrete GPUs from 0)")))?;
    if !supported {
        return Err(Error::Backend(format!("{name}: this device has no {dtype} arithmetic")));
    }
    // Read-then-configure must not interleave between threads (two engines, parallel tests).
    static CONFIGURE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = CONFIGURE.lock().unwrap_or_else(|e| e.into_inner());
    if device.settings().float_dtype == want {
        // Nothing to change (and configuring again would fail once tensors exist).
        return Ok(device);
    }
    device
        .configure(want)
        .map_err(|e| Error::Backend(format!("{name}: cannot compute in {dtype}: {e:?}")))?;
    Ok(device)
}

/// The float type a device computes in, by the names of [`DTYPES`].
pub fn dtype_name(device: &Device) -> &'static str {
    if *device == Device::flex() && crate::ops::Routes::current().cpu_bf16 {
        return "bf16";
    }
    match device.settings().float_dtype {
        FloatDType::F16 => "f16",
        FloatDType::BF16 => "bf16",
        FloatDType::F64 => "f64",
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_are_checked_by_name() {
        let cpu = open("cpu", "f32").expect("cpu f32");
        assert_eq!(dtype_name(&cpu), "f32");
        let e = open("cpu", "f16").expect_err("f16 is GPU-only").to_string();
        assert!(e.contains("f16"), "{e}");
        let e = open("cpu", "f8").expect_err("unknown dtype").to_string();
        assert!(e.contains("unknown dtype") && e.contains("f32, f16"), "{e}");
        assert!(open("tpu", "f32").is_err());
    }
}
