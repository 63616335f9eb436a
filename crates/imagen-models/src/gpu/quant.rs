//! Linear weights kept block-quantized on the GPU: whole values with one f32 scale per 32 (or
//! 16) inputs, as GGUF's Q8_0, Q5_0, Q4_0 and Q6_K store them, multiplied by burn-cubecl's
//! matmul, which reads the packed values and their scales as it loads each tile (no dequantised
//! copy of the weight is ever made). Q4_0's values (−8..7) are packed eight to a word (0.625
//! bytes a weight with the scales), the others four (1.125); f16 weights take 2, f32 4.
//!
//! burn-cubecl reads one scale per packed word, so a block must run along the packed axis:
//! the tensor is stored as the file's `[d_out, d_in]` rows (blocks along `d_in`, packed along
//! `d_in`) and handed out transposed, `[d_in, d_out]` as a view, which its matmul reads
//! column-major. (burn's CPU backend packs the other way: `cpu::quant` has its own layout.)

use burn::tensor::quantization::{QuantMode, QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Inputs per scale, by file type.
const BLOCKS: [usize; 2] = [32, 16];

/// The scheme: `value` packed in u32 words along the last axis, `block` inputs per f32 scale.
fn scheme(value: QuantValue, block: usize) -> QuantScheme {
    QuantScheme::default()
        .with_value(value)
        .with_store(QuantStore::PackedU32(0))
        .with_mode(QuantMode::Symmetric)
        .per_block([block as u8], ScaleDtype::F32)
}

/// The quantized weight `[d_in, d_out]` on `device` from a PyTorch-layout `[d_out, d_in]`
/// weight's whole values and per-block scales (GGUF's order: each output row's blocks in turn);
/// `None` when the lengths disagree or `d_in` is not a whole number of blocks.
pub fn from_rows(q: &[i8], scales: &[f32], d_out: usize, d_in: usize, device: &Device) -> Option<Tensor<2>> {
    let block = q.len().checked_div(scales.len())?;
    if !BLOCKS.contains(&block)
        || !d_in.is_multiple_of(block)
        || q.len() != d_out * d_in
        || scales.len() * block != q.len()
    {
        return None;
    }
    let four_bit = block == 32 && q.iter().all(|v| (-8..8).contains(v));
    let data = if four_bit {
        q4_data(q, scales, [d_out, d_in])
    } else {
        TensorData::quantized(q.to_vec(), [d_out, d_in], scheme(QuantValue::Q8S, block), scales, None)
    };
    Some(Tensor::from_data(data, device).transpose())
}

/// 4-bit values eight to a little-endian u32 (value `p` of a word at bits `4p`, two's
/// complement), then the f32 scales, as burn lays out quantized bytes (`TensorData::quantized`
/// takes 8-bit values only).
fn q4_data(q: &[i8], scales: &[f32], shape: [usize; 2]) -> TensorData {
    let mut bytes: Vec<u8> = Vec::with_capacity(q.len() / 2 + scales.len() * 4);
    for word in q.chunks(8) {
        let w = word
            .iter()
            .enumerate()
            .fold(0u32, |w, (p, &v)| w | ((v as u32 & 0xF) << (4 * p)));
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    for s in scales {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    TensorData::from_bytes_vec(bytes, shape, DType::QFloat(scheme(QuantValue::Q4S, 32)))
}
