//! `cfg(cube_kernels)`: the one gate of GPU-only code. imagen's GPU kernels need burn's raw
//! cube tensors, which exist on a GPU backend (`wgpu`) without burn's fusion (`gpu-autotune`
//! wraps them in fusion handles).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cube_kernels)");
    let wgpu = std::env::var_os("CARGO_FEATURE_WGPU").is_some();
    let fusion = std::env::var_os("CARGO_FEATURE_GPU_AUTOTUNE").is_some();
    if wgpu && !fusion {
        println!("cargo::rustc-cfg=cube_kernels");
    }
}
