//! Seeded Gaussian noise that reproduces other tools bit for bit.
//!
//! - [`TorchCpuRng`]: `torch.manual_seed(seed)` + `torch.randn(shape)` on the CPU (mt19937), what
//!   diffusers uses with a CPU `torch.Generator` and what ComfyUI uses, bit for bit as x86-64
//!   PyTorch computes it (its AVX2 `normal_fill` evaluates log/sin/cos with the Cephes polynomials
//!   of `avx_mathfun.h`, compiled with fused multiply-adds; ported below). ARM builds of PyTorch
//!   use libm there instead and differ in the last bits.
//! - [`PhiloxRng`]: Philox4x32-10 as CUDA's `torch.randn` draws it, in the form A1111/sd-webui
//!   reproduces on any device (its `rng_philox.py`).

/// A source of standard-normal noise, drawn in the order the caller asks for it.
pub trait NoiseSource: Send {
    /// `n` values of `N(0, 1)`, as one `randn` call of that many elements.
    fn randn(&mut self, n: usize) -> Vec<f32>;
}

/// Which generator a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngKind {
    /// PyTorch's CPU generator (diffusers with `torch.Generator("cpu")`, ComfyUI).
    Torch,
    /// CUDA-style Philox (A1111 / sd-webui default "GPU" noise).
    Philox,
}

impl RngKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "torch" | "cpu" => Some(RngKind::Torch),
            "philox" | "gpu" | "cuda" => Some(RngKind::Philox),
            _ => None,
        }
    }

    pub fn generator(self, seed: u64) -> Box<dyn NoiseSource> {
        match self {
            RngKind::Torch => Box::new(TorchCpuRng::new(seed)),
            RngKind::Philox => Box::new(PhiloxRng::new(seed)),
        }
    }
}

/// The 32-bit Mersenne Twister (`std::mt19937`), seeded as `at::mt19937` does.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        // at::mt19937 keeps the low 32 bits of the 64-bit seed.
        state[0] = seed as u32;
        for j in 1..624 {
            let prev = state[j - 1];
            state[j] = 1812433253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }
}

/// `torch.manual_seed(seed)` then successive `torch.randn(..)` calls, CPU, float32.
pub struct TorchCpuRng {
    mt: Mt19937,
    /// PyTorch's scalar path draws normals in pairs and caches the second one.
    next_double_normal: Option<f64>,
}

impl TorchCpuRng {
    pub fn new(seed: u64) -> Self {
        TorchCpuRng {
            mt: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits / 2^24.
    fn uniform_f32(&mut self) -> f32 {
        ((self.mt.next_u32() & 0x00ff_ffff) as f64 / (1u64 << 24) as f64) as f32
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 bits of a 64-bit draw / 2^53.
    fn uniform_f64(&mut self) -> f64 {
        let hi = self.mt.next_u32() as u64;
        let lo = self.mt.next_u32() as u64;
        let r = (hi << 32) | lo;
        (r & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
    }

    /// `at::normal_distribution<double>`, the path for fewer than 16 values.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (1.0 - u2).ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// PyTorch's `normal_fill_16_AVX2`: Box–Muller on 16 uniforms, pairing `i` with `i + 8`, all in
/// float32 (θ = f32(2π)·u₂), with `avx_mathfun.h`'s log and sincos.
fn normal_fill_16(data: &mut [f32]) {
    const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * cephes_logf(u1)).sqrt();
        let (sin, cos) = cephes_sincosf(TWO_PI * u2);
        data[j] = radius * cos;
        data[j + 8] = radius * sin;
    }
}

// The constants are the header's literals, verbatim.
#[allow(clippy::excessive_precision)]
/// `log256_ps` from `avx_mathfun.h` (Cephes `logf`) for x in (0, 1], lane by lane. The
/// `mul_add`s are where GCC contracts the header's separate multiply and add into FMAs in
/// PyTorch's build; matching them is what makes the result bit-exact (checked against
/// `torch.randn` on 2.6 M values).
fn cephes_logf(x: f32) -> f32 {
    const P: [f32; 9] = [
        7.0376836292E-2,
        -1.1514610310E-1,
        1.1676998740E-1,
        -1.2420140846E-1,
        1.4249322787E-1,
        -1.6668057665E-1,
        2.0000714765E-1,
        -2.4999993993E-1,
        3.3333331174E-1,
    ];
    let bits = x.max(f32::MIN_POSITIVE).to_bits();
    // Split x = m · 2^e with m in [0.5, 1).
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    let m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut x = m - 1.0;
    if m < std::f32::consts::FRAC_1_SQRT_2 {
        e -= 1.0;
        x += m;
    }
    let z = x * x;
    let mut y = P[0];
    for p in &P[1..] {
        y = y.mul_add(x, *p);
    }
    let y = (y * x).mul_add(z, e * -2.12194440e-4);
    let y = z.mul_add(-0.5, y);
    e.mul_add(0.693359375, x + y)
}

#[allow(clippy::excessive_precision)]
/// `sincos256_ps` from `avx_mathfun.h` (Cephes `sinf`/`cosf`), lane by lane: (sin x, cos x).
fn cephes_sincosf(x: f32) -> (f32, f32) {
    let sign_sin = x.is_sign_negative();
    let mut x = x.abs();
    // Octant: j = (int(x · 4/π) + 1) & !1.
    let j = ((x * 1.27323954473516) as i32 + 1) & !1;
    let y = j as f32;
    let swap_sign_sin = j & 4 != 0;
    let poly_is_sin = j & 2 == 0;
    let sign_cos = !(j - 2) & 4 != 0;
    // Extended-precision reduction x − j·π/4.
    x = y.mul_add(-0.78515625, x);
    x = y.mul_add(-2.4187564849853515625e-4, x);
    x = y.mul_add(-3.77489497744594108e-8, x);
    let z = x * x;
    let c = 2.443315711809948E-5f32
        .mul_add(z, -1.388731625493765E-3)
        .mul_add(z, 4.166664568298827E-2);
    let c = (c * z).mul_add(z, -(z * 0.5)) + 1.0;
    let s = (-1.9515295891E-4f32)
        .mul_add(z, 8.3321608736E-3)
        .mul_add(z, -1.6666654611E-1);
    let s = (s * z).mul_add(x, x);
    let (sin, cos) = if poly_is_sin { (s, c) } else { (c, s) };
    let sin = if sign_sin ^ swap_sign_sin { -sin } else { sin };
    let cos = if sign_cos { -cos } else { cos };
    (sin, cos)
}

impl NoiseSource for TorchCpuRng {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for start in (0..n - 15).step_by(16) {
            normal_fill_16(&mut data[start..start + 16]);
        }
        if !n.is_multiple_of(16) {
            // PyTorch redraws the last 16 values (overlapping already transformed ones).
            let tail = n - 16;
            for v in &mut data[tail..] {
                *v = self.uniform_f32();
            }
            normal_fill_16(&mut data[tail..]);
        }
        data
    }
}

/// Philox4x32-10 with CUDA `torch.randn`'s layout, as A1111 reproduces it: key = the seed's two
/// 32-bit halves, counter = `[offset, 0, index, 0]`, one offset per `randn` call, Box–Muller on
/// the first two outputs.
pub struct PhiloxRng {
    seed: u64,
    offset: u32,
}

impl PhiloxRng {
    pub fn new(seed: u64) -> Self {
        PhiloxRng { seed, offset: 0 }
    }
}

const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

fn philox4x32_10(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W[0]);
            k[1] = k[1].wrapping_add(PHILOX_W[1]);
        }
        let v1 = c[0] as u64 * PHILOX_M[0] as u64;
        let v2 = c[2] as u64 * PHILOX_M[1] as u64;
        c = [
            (v2 >> 32) as u32 ^ c[1] ^ k[0],
            v2 as u32,
            (v1 >> 32) as u32 ^ c[3] ^ k[1],
            v1 as u32,
        ];
    }
    c
}

impl NoiseSource for PhiloxRng {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        // The constants are float32 (as A1111 writes them); NumPy then computes in float64.
        let inv32 = 2.3283064e-10f32 as f64;
        let inv32_2pi = (2.3283064e-10f64 * 6.2831855f64) as f32 as f64;
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let offset = self.offset;
        self.offset = self.offset.wrapping_add(1);
        (0..n)
            .map(|i| {
                let g = philox4x32_10([offset, 0, i as u32, 0], key);
                let u = g[0] as f64 * inv32 + inv32 / 2.0;
                let v = g[1] as f64 * inv32_2pi + inv32_2pi / 2.0;
                ((-2.0 * u.ln()).sqrt() * v.sin()) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference sequence of `std::mt19937` seeded with 5489: the 10000th output is 4123659995.
    #[test]
    fn mt19937_matches_the_standard() {
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3499211612);
        let mut last = 0;
        for _ in 1..10000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4123659995);
    }

    /// Against `tools/reference/make_rng_fixtures.py` for several seeds and shapes (sizes below
    /// 16, exactly 16, not a multiple of 16), two successive calls per generator: Philox bit for
    /// bit, torch.randn bit for bit.
    #[test]
    fn matches_reference_noise() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/golden/rng.safetensors"
        );
        let bytes = std::fs::read(path).expect("rng golden");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut names: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| n.ends_with("_a"))
            .map(str::to_owned)
            .collect();
        names.sort();
        assert!(names.len() >= 70, "{} cases", names.len());
        for name in names {
            // {torch|philox}_{seed}_{shape}_a
            let parts: Vec<&str> = name.split('_').collect();
            let kind = if parts[0] == "torch" {
                RngKind::Torch
            } else {
                RngKind::Philox
            };
            let seed: u64 = parts[1].parse().expect("seed");
            let mut g = kind.generator(seed);
            for call in ["a", "b"] {
                let key = format!("{}_{}_{}_{call}", parts[0], parts[1], parts[2]);
                let t = st.tensor(&key).expect("tensor");
                let n: usize = t.shape().iter().product();
                let want: Vec<u32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let got: Vec<u32> = g.randn(n).iter().map(|v| v.to_bits()).collect();
                let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(differing, 0, "{key}: {differing} of {n} values differ");
            }
        }
    }
}
