//! Every switch that picks a route, in one struct read once: from the environment at the first
//! op, replaced by [`Routes::set`] (the CLI's flags) or, for one scope on one thread, by
//! [`Routes::scoped`] (tests and benchmarks, no global lock needed).
//!
//! The ops read [`Routes::current`] on the calling thread when they choose a route, and pass
//! what a kernel needs as arguments: `cpu/` and `gpu/` read no switch themselves.

use std::cell::Cell;
use std::sync::{LazyLock, RwLock};

pub use super::types::Winograd;

/// How convolutions run on GPU backends (`IMAGEN_GPU_CONV=burn|im2col|gemm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvRoute {
    /// burn's `conv2d` (its direct kernel without autotune); 1×1 convs still go through matmul.
    Burn,
    /// One batched matmul over the windows of the padded input (the default: measured fastest,
    /// BENCHMARKS.md).
    Im2col,
    /// burn-cubecl's implicit GEMM on tensor cores, else `Im2col`.
    ImplicitGemm,
}

/// How attention runs on GPU backends (`IMAGEN_GPU_ATTENTION=burn|matmul|flash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionRoute {
    /// burn's `attention` (without autotune: separate kernels, scores materialised).
    Burn,
    /// Two batched matmuls and a softmax (the default).
    Matmul,
    /// burn-cubecl's flash attention on tensor cores, else `Matmul`.
    Flash,
}

/// The route switches. `Default` is what an empty environment gives: the routes BENCHMARKS.md
/// measured fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routes {
    /// imagen's CPU kernels (`IMAGEN_CPU_KERNELS=0`: burn's stock ops, for comparison).
    pub cpu_kernels: bool,
    /// CPU conv and linear weights in bf16 on AMX tiles, laid out at load
    /// ([`super::prepare_weights`]): set by `device::open("cpu", "bf16")`, not by the environment.
    pub cpu_bf16: bool,
    /// GGUF linear weights in Q8_0/Q5_0/Q4_0/Q6_K stay block-quantized in CPU memory, dequantised a
    /// layer per call (`IMAGEN_KEEP_QUANTIZED=0`: dequantised at load, the same results in more
    /// memory).
    pub keep_quantized: bool,
    /// The bf16 GEMM on AMX tiles where the CPU has them (`IMAGEN_CPU_AMX=0`: AVX512-BF16 dot
    /// products, what CPUs without AMX run). Applied process-wide by `device::open`.
    pub cpu_amx: bool,
    pub winograd: Winograd,
    pub gpu_conv: ConvRoute,
    pub gpu_attention: AttentionRoute,
    /// imagen's GPU norm and softmax kernels (`IMAGEN_GPU_KERNELS=0`: burn tensor ops, their
    /// reference; the fused kernels are off then too).
    pub gpu_kernels: bool,
    /// imagen's fused GPU kernels: epilogues, fused im2col, head split (`IMAGEN_GPU_FUSED=0`:
    /// the unfused ops with imagen's norm and softmax kernels, for an A/B with one binary).
    pub gpu_fused: bool,
    /// im2col column matrices over this many bytes are built a band of output rows at a time
    /// (`IMAGEN_GPU_IM2COL_BYTES`). 64 MiB: the UNet's f16 matrices (≤ 47 MB at 512²) stay whole,
    /// a 512² VAE conv takes 10 bands in f16; unbanded, a 512² decode held 3.7 GB on an H100 and
    /// lavapipe refused a 151 MB matrix (Vulkan guarantees 128 MiB per storage binding).
    pub im2col_bytes: usize,
    /// burn-cubecl's flash attention planes (`IMAGEN_GPU_FLASH_PLANES`), for the flash route.
    pub flash_planes: u8,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            cpu_kernels: true,
            cpu_bf16: false,
            keep_quantized: true,
            cpu_amx: true,
            winograd: Winograd::WherePays,
            gpu_conv: ConvRoute::Im2col,
            gpu_attention: AttentionRoute::Matmul,
            gpu_kernels: true,
            gpu_fused: true,
            im2col_bytes: 64 << 20,
            flash_planes: 4,
        }
    }
}

static GLOBAL: LazyLock<RwLock<Routes>> = LazyLock::new(|| RwLock::new(Routes::from_env()));

thread_local! {
    static SCOPED: Cell<Option<Routes>> = const { Cell::new(None) };
}

impl Routes {
    /// The routes the `IMAGEN_*` environment variables name; unset or unknown values give the
    /// default.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup (testable without touching the process).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let d = Routes::default();
        let on = |k: &str, default: bool| var(k).map_or(default, |v| v != "0");
        Routes {
            cpu_kernels: on("IMAGEN_CPU_KERNELS", d.cpu_kernels),
            cpu_bf16: d.cpu_bf16,
            keep_quantized: on("IMAGEN_KEEP_QUANTIZED", d.keep_quantized),
            cpu_amx: on("IMAGEN_CPU_AMX", d.cpu_amx),
            winograd: match var("IMAGEN_CPU_WINOGRAD").as_deref() {
                Some("0") => Winograd::Off,
                Some("all") => Winograd::Everywhere,
                _ => d.winograd,
            },
            gpu_conv: match var("IMAGEN_GPU_CONV").as_deref() {
                Some("burn") => ConvRoute::Burn,
                Some("gemm") => ConvRoute::ImplicitGemm,
                _ => d.gpu_conv,
            },
            gpu_attention: match var("IMAGEN_GPU_ATTENTION").as_deref() {
                Some("burn") => AttentionRoute::Burn,
                Some("flash") => AttentionRoute::Flash,
                _ => d.gpu_attention,
            },
            gpu_kernels: on("IMAGEN_GPU_KERNELS", d.gpu_kernels),
            gpu_fused: on("IMAGEN_GPU_FUSED", d.gpu_fused),
            im2col_bytes: var("IMAGEN_GPU_IM2COL_BYTES")
                .and_then(|v| v.parse::<usize>().ok())
                .map_or(d.im2col_bytes, |b| b.max(1)),
            flash_planes: var("IMAGEN_GPU_FLASH_PLANES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.flash_planes),
        }
    }

    /// The routes in force on this thread: a [`scoped`](Self::scoped) override, else the
    /// process's.
    pub fn current() -> Self {
        SCOPED
            .with(Cell::get)
            .unwrap_or_else(|| *GLOBAL.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes these the process's routes (threads inside a [`scoped`](Self::scoped) call keep theirs).
    pub fn set(self) {
        *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = self;
    }

    /// Runs `f` with these routes on the calling thread only, restoring the previous ones after
    /// (also if `f` panics). Every op chooses its route on the calling thread, so a test can
    /// run one route while another test runs another.
    pub fn scoped<R>(self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Routes>);
        impl Drop for Restore {
            fn drop(&mut self) {
                SCOPED.with(|s| s.set(self.0));
            }
        }
        let _restore = Restore(SCOPED.with(|s| s.replace(Some(self))));
        f()
    }

    /// Whether the fused GPU kernels run: compiled in, and both imagen's kernels and the fused
    /// ones on.
    pub fn fused(&self) -> bool {
        super::GPU_KERNELS && self.gpu_kernels && self.gpu_fused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unset variables give the routes BENCHMARKS.md measured fastest (a lookup bug once turned
    /// the kernels off by default without any test noticing); each variable is read.
    #[test]
    fn environment_names_each_route() {
        assert_eq!(Routes::from_vars(|_| None), Routes::default());
        let d = Routes::default();
        assert!(d.cpu_kernels && d.gpu_kernels && d.gpu_fused);
        assert_eq!(
            (d.gpu_conv, d.gpu_attention),
            (ConvRoute::Im2col, AttentionRoute::Matmul)
        );
        let vars = [
            ("IMAGEN_CPU_KERNELS", "0"),
            ("IMAGEN_CPU_WINOGRAD", "all"),
            ("IMAGEN_GPU_CONV", "gemm"),
            ("IMAGEN_GPU_ATTENTION", "burn"),
            ("IMAGEN_GPU_KERNELS", "0"),
            ("IMAGEN_GPU_FUSED", "0"),
            ("IMAGEN_GPU_IM2COL_BYTES", "4096"),
            ("IMAGEN_GPU_FLASH_PLANES", "2"),
        ];
        let r = Routes::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()));
        let want = Routes {
            cpu_kernels: false,
            cpu_bf16: false,
            keep_quantized: true,
            cpu_amx: true,
            winograd: Winograd::Everywhere,
            gpu_conv: ConvRoute::ImplicitGemm,
            gpu_attention: AttentionRoute::Burn,
            gpu_kernels: false,
            gpu_fused: false,
            im2col_bytes: 4096,
            flash_planes: 2,
        };
        assert_eq!(r, want);
        assert!(!r.fused());
    }

    /// A scoped override holds on its thread only, nests, and is undone after.
    #[test]
    fn scoped_routes_are_per_thread() {
        let outer = Routes::current();
        let off = Routes {
            gpu_fused: false,
            ..outer
        };
        off.scoped(|| {
            assert!(!Routes::current().gpu_fused);
            let other = std::thread::spawn(Routes::current).join().expect("thread");
            assert_eq!(other, outer);
            Routes { im2col_bytes: 7, ..off }.scoped(|| assert_eq!(Routes::current().im2col_bytes, 7));
            assert_eq!(Routes::current(), off);
        });
        assert_eq!(Routes::current(), outer);
    }
}
