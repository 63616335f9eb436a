//! Linear weights kept block-quantized in memory: whole values (i8) with one f32 scale per 32
//! inputs, as GGUF's Q8_0, Q5_0 and Q4_0 store them, or per 16 (Q6_K's sub-blocks): 1.125 or
//! 1.25 bytes a weight against bf16's 2 and f32's 4. Each call dequantises one layer into what the GEMM reads (bf16 VNNI pairs for the
//! AMX kernel, f32 rows for the f32 kernel); a whole dequantised model never exists.
//!
//! The storage is a burn quantized tensor (`DType::QFloat`: `Q8S` values, blocks of `[32, 1]` or `[16, 1]`
//! over burn's `[d_in, d_out]`, f32 scales), so burn's own `dequantize` reads it for the ops that
//! take burn tensors (the fallbacks, LoRA merging).

use burn::tensor::quantization::{QuantMode, QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, Tensor, TensorData};
use burn_dispatch::{BackendTensor, DispatchKindConversion, DispatchTensor};
use burn_flex::{Flex, FlexQTensor, FlexTensor};

/// Inputs per scale, by file type.
const BLOCKS: [usize; 2] = [32, 16];

/// The scheme these weights are stored in, `block` inputs per scale.
fn scheme(block: usize) -> QuantScheme {
    QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .with_store(QuantStore::Native)
        .with_mode(QuantMode::Symmetric)
        .per_block([block as u8, 1], ScaleDtype::F32)
}

/// A weight `[d_in, d_out]`: `w[k][n] = scales[k / block][n] · q[k][n]`, both row-major.
#[derive(Clone, Copy)]
pub(crate) struct Q8<'a> {
    pub q: &'a [i8],
    pub scales: &'a [f32],
    pub d_in: usize,
    pub d_out: usize,
    pub block: usize,
}

impl Q8<'_> {
    /// Row `k` (input `k`, every output) dequantised into `out[..d_out]`.
    pub fn row_into(&self, k: usize, out: &mut [f32]) {
        let n = self.d_out;
        let q = &self.q[k * n..][..n];
        let s = &self.scales[k / self.block * n..][..n];
        for ((o, &q), &s) in out[..n].iter_mut().zip(q).zip(s) {
            *o = s * q as f32;
        }
    }
}

/// The quantized tensor `[d_in, d_out]` from a PyTorch-layout `[d_out, d_in]` weight's values
/// and per-32 or per-16 scales (GGUF's order: each output row's blocks in turn). `None` when the
/// lengths disagree or `d_in` is not a whole number of blocks.
pub fn from_rows(q: &[i8], scales: &[f32], d_out: usize, d_in: usize) -> Option<Tensor<2>> {
    let block = q.len().checked_div(scales.len())?;
    if !BLOCKS.contains(&block)
        || !d_in.is_multiple_of(block)
        || q.len() != d_out * d_in
        || scales.len() * block != q.len()
    {
        return None;
    }
    let per_row = d_in / block;
    let (mut qt, mut st) = (vec![0i8; q.len()], vec![0f32; scales.len()]);
    for o in 0..d_out {
        for i in 0..d_in {
            qt[i * d_out + o] = q[o * d_in + i];
        }
        for b in 0..per_row {
            st[b * d_out + o] = scales[o * per_row + b];
        }
    }
    let values = FlexTensor::from_data(TensorData::new(qt, [d_in, d_out]));
    let tensor = FlexQTensor::new(values, scheme(block), st, None);
    let dispatch = <DispatchTensor as DispatchKindConversion<Flex>>::from_backend(BackendTensor::Quantized(tensor));
    Some(Tensor::from_dispatch(dispatch))
}

/// The storage of a tensor made by [`from_rows`]; `None` for any other tensor.
pub(crate) fn storage(t: &Tensor<2>) -> Option<FlexQTensor> {
    if !BLOCKS.iter().any(|&b| t.dtype() == DType::QFloat(scheme(b))) {
        return None;
    }
    match <DispatchTensor as DispatchKindConversion<Flex>>::try_into_backend(t.clone().into_dispatch()).ok()? {
        BackendTensor::Quantized(q) => Some(q),
        _ => None,
    }
}

/// [`storage`]'s parts as a [`Q8`], checked against the tensor's shape.
pub(crate) fn parts(q: &FlexQTensor, [d_in, d_out]: [usize; 2]) -> Option<Q8<'_>> {
    let values = q.tensor().as_slice::<i8>()?;
    let scales = q.scales();
    let block = values.len().checked_div(scales.len())?;
    let fits = values.len() == d_in * d_out && scales.len() * block == values.len() && d_in.is_multiple_of(block);
    (fits && BLOCKS.contains(&block)).then_some(Q8 {
        q: values,
        scales,
        d_in,
        d_out,
        block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(d_out: usize, d_in: usize, block: usize) -> (Vec<i8>, Vec<f32>) {
        let q = (0..d_out * d_in).map(|i| ((i * 37 % 255) as i32 - 127) as i8).collect();
        let s = (0..d_out * d_in / block).map(|i| 0.001 * (1 + i % 7) as f32).collect();
        (q, s)
    }

    /// burn's own `dequantize` reads the layout as [`Q8::row_into`] does, and both give the
    /// transposed `d·q` of the file's rows.
    #[test]
    fn burn_reads_the_layout_we_write() {
        for block in BLOCKS {
            let (d_out, d_in) = (24, 64);
            let (q, s) = sample(d_out, d_in, block);
            let t = from_rows(&q, &s, d_out, d_in).expect("whole blocks");
            assert_eq!(t.dims(), [d_in, d_out]);
            let st = storage(&t).expect("quantized");
            let w = parts(&st, [d_in, d_out]).expect("parts");
            let burn: Vec<f32> = t.dequantize().into_data().try_to_vec::<f32>().expect("f32");
            let mut row = vec![0f32; d_out];
            for k in 0..d_in {
                w.row_into(k, &mut row);
                for n in 0..d_out {
                    let want = s[n * d_in / block + k / block] * q[n * d_in + k] as f32;
                    assert_eq!(row[n].to_bits(), want.to_bits(), "{block}: [{k}][{n}]");
                    assert_eq!(
                        burn[k * d_out + n].to_bits(),
                        want.to_bits(),
                        "{block}: burn [{k}][{n}]"
                    );
                }
            }
        }
    }

    #[test]
    fn partial_blocks_and_other_tensors_are_refused() {
        let (q, s) = sample(2, 32, 32);
        assert!(from_rows(&q[..48], &s, 2, 24).is_none());
        assert!(from_rows(&q, &s[..1], 2, 32).is_none(), "64 values per scale");
        let f = Tensor::<2>::zeros([32, 2], &burn::tensor::Device::flex());
        assert!(storage(&f).is_none());
    }
}
