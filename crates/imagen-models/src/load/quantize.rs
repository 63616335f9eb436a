//! Writing block-quantized tensors and GGUF files (`imagen quantize`): the inverse of
//! `quants.rs` and `gguf.rs`. Each quantizer follows the `gguf` package's `quantize_blocks`
//! (itself bit-exact with ggml's reference `quantize_row_*_ref`) step for step in f32, so the
//! bytes are the same (tested against `gguf.quants.quantize`).

use std::io::Write;
use std::path::Path;

use half::{bf16, f16};

use super::gguf::GgmlType;
use crate::error::{Error, Result};

/// The types [`quantize`] writes.
pub const WRITABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

/// `round(x)` as ggml's `roundf` (half away from zero), written as the `gguf` package does.
fn roundf(x: f32) -> f32 {
    let a = x.abs();
    let floored = a.floor();
    (floored + (2.0 * (a - floored)).floor()).copysign(x) * if x == 0.0 { 0.0 } else { 1.0 }
}

fn half_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// 1/d, or 0 where d is 0 (an all-zero block).
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// The value of largest magnitude, signed (the first of equals, as numpy's `argmax`).
fn signed_max(b: &[f32]) -> f32 {
    let mut m = b[0];
    for &x in &b[1..] {
        if x.abs() > m.abs() {
            m = x;
        }
    }
    m
}

fn min_max(b: &[f32]) -> (f32, f32) {
    b.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    })
}

/// Nibbles: value i in the low half of byte i, value 16 + i in the high half.
fn nibbles(q: &[u8; 32], out: &mut Vec<u8>) {
    out.extend((0..16).map(|i| (q[i] & 0xf) | (q[16 + i] << 4)));
}

/// The fifth bits of 32 values, value i at bit i (little-endian u32).
fn high_bits(q: &[u8; 32]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (i, &v)| h | (((v >> 4) as u32 & 1) << i));
    bits.to_le_bytes()
}

fn block(kind: GgmlType, b: &[f32], out: &mut Vec<u8>) {
    let mut q = [0u8; 32];
    match kind {
        GgmlType::Q8_0 => {
            let d = b.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            let id = inverse(d);
            out.extend(half_bytes(d));
            out.extend(b.iter().map(|&x| roundf(x * id) as i8 as u8));
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let (levels, top) = if kind == GgmlType::Q4_0 {
                (8.0, 15.0)
            } else {
                (16.0, 31.0)
            };
            let d = signed_max(b) / -levels;
            let id = inverse(d);
            for (q, &x) in q.iter_mut().zip(b) {
                *q = (x * id + (levels + 0.5)).trunc().clamp(0.0, top) as u8;
            }
            out.extend(half_bytes(d));
            if kind == GgmlType::Q5_0 {
                out.extend(high_bits(&q));
            }
            nibbles(&q, out);
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let top = if kind == GgmlType::Q4_1 { 15.0 } else { 31.0 };
            let (min, max) = min_max(b);
            let d = (max - min) / top;
            let id = inverse(d);
            for (q, &x) in q.iter_mut().zip(b) {
                *q = ((x - min) * id + 0.5).trunc().clamp(0.0, top) as u8;
            }
            out.extend(half_bytes(d));
            out.extend(half_bytes(min));
            if kind == GgmlType::Q5_1 {
                out.extend(high_bits(&q));
            }
            nibbles(&q, out);
        }
        _ => unreachable!("block types only"),
    }
}

/// `values` stored as `kind` (the bytes of a GGUF tensor). Block types need whole 32-value rows.
pub fn quantize(kind: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match kind {
        GgmlType::F32 => out.extend(values.iter().flat_map(|x| x.to_le_bytes())),
        GgmlType::F16 => out.extend(values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes())),
        GgmlType::BF16 => out.extend(values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes())),
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            if !values.len().is_multiple_of(32) {
                return Err(Error::Quantized {
                    kind: kind.name(),
                    message: format!("{} values are not whole blocks of 32", values.len()),
                });
            }
            out.reserve(values.len() / 32 * kind.block().1);
            for b in values.chunks_exact(32) {
                block(kind, b, &mut out);
            }
        }
        other => {
            return Err(Error::Quantized {
                kind: other.name(),
                message: format!(
                    "writing this type is not supported (one of {})",
                    WRITABLE.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    Ok(out)
}

/// A metadata value [`GgufWriter`] writes.
pub enum Meta {
    Str(String),
    U32(u32),
}

/// A tensor to write: its name, shape (outermost first, as PyTorch) and type.
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: GgmlType,
}

/// Writes a GGUF v3 file: the header with every tensor's info first (sizes follow from shapes
/// and types), then each tensor's bytes from `data(i)`, one at a time, aligned to 32.
pub fn write_gguf(
    path: &Path,
    metadata: &[(&str, Meta)],
    entries: &[Entry],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    const ALIGN: usize = 32;
    let io = |e: std::io::Error| Error::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    let mut head = Vec::new();
    let string = |h: &mut Vec<u8>, s: &str| {
        h.extend((s.len() as u64).to_le_bytes());
        h.extend(s.as_bytes());
    };
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((entries.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut head, key);
        match value {
            Meta::U32(v) => {
                head.extend(4u32.to_le_bytes());
                head.extend(v.to_le_bytes());
            }
            Meta::Str(s) => {
                head.extend(8u32.to_le_bytes());
                string(&mut head, s);
            }
        }
    }
    let mut sizes = Vec::with_capacity(entries.len());
    let mut offset = 0usize;
    for e in entries {
        let n: usize = e.shape.iter().product();
        let (block, bytes) = e.kind.block();
        let size = n / block * bytes;
        string(&mut head, &e.name);
        head.extend((e.shape.len() as u32).to_le_bytes());
        for d in e.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(e.kind.id().to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        sizes.push(size);
        offset = (offset + size).next_multiple_of(ALIGN);
    }
    head.resize(head.len().next_multiple_of(ALIGN), 0);
    w.write_all(&head).map_err(io)?;
    for (i, size) in sizes.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() != *size {
            return Err(Error::Quantized {
                kind: "GGUF",
                message: format!("tensor `{}`: {} bytes for {size}", entries[i].name, bytes.len()),
            });
        }
        w.write_all(&bytes).map_err(io)?;
        w.write_all(&vec![0u8; size.next_multiple_of(ALIGN) - size])
            .map_err(io)?;
    }
    w.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/quants")
    }

    /// The same bytes as `gguf.quants.quantize` (`make_quant_fixtures.py`'s `quantize_fixtures`).
    #[test]
    fn quantize_matches_gguf_byte_for_byte() {
        let input: Vec<f32> = std::fs::read(dir().join("quantize_input.f32"))
            .expect("input")
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for kind in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let want = std::fs::read(dir().join(format!("{}.quantized", kind.name()))).expect("fixture");
            let got = quantize(kind, &input).expect("quantize");
            assert_eq!(got.len(), want.len(), "{kind:?}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{kind:?}: byte {i} (block {})", i / kind.block().1);
            }
        }
        assert!(quantize(GgmlType::Q8_0, &input[..31]).is_err());
        assert!(quantize(GgmlType::Q6K, &input).is_err());
    }

    #[test]
    fn written_files_read_back() {
        let tmp = std::env::temp_dir().join(format!("imagen-quantize-{}.gguf", std::process::id()));
        let values: Vec<f32> = (0..64 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let entries = vec![
            Entry {
                name: "w".into(),
                shape: vec![3, 64],
                kind: GgmlType::Q8_0,
            },
            Entry {
                name: "b".into(),
                shape: vec![3],
                kind: GgmlType::F32,
            },
        ];
        write_gguf(
            &tmp,
            &[("general.architecture", Meta::Str("sd1".into()))],
            &entries,
            |i| quantize(entries[i].kind, if i == 0 { &values } else { &values[..3] }),
        )
        .expect("write");
        let g = super::super::gguf::GgufFile::open(&tmp).expect("read");
        assert_eq!(
            g.tensor("w").map(|t| (t.shape.clone(), t.kind)),
            Some((vec![3, 64], GgmlType::Q8_0))
        );
        let back = g.f32_values("w").expect("w");
        for (a, b) in back.iter().zip(&values) {
            assert!((a - b).abs() <= 1.0 / 127.0, "{a} vs {b}");
        }
        assert_eq!(g.f32_values("b").expect("b"), values[..3]);
        let _ = std::fs::remove_file(tmp);
    }
}
