//! GGUF files as stable-diffusion.cpp and ComfyUI-GGUF users download them: a ggml container of
//! the original checkpoint's tensors (same names), some block-quantized. The file is
//! memory-mapped; a tensor is read (dequantised to f32 by [`super::quants`]) only when asked for.
//!
//! Layout (GGUF v2/v3, little-endian): magic `GGUF`, version, tensor and metadata counts; the
//! metadata key/values; each tensor's name, dims (innermost first), ggml type and offset; then
//! the data, aligned to `general.alignment` (32 by default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::quants::{BlockType, Q4_0, Q4_1, Q4K, Q5_0, Q5_1, Q5K, Q6K, Q8_0, dequantize_row, symmetric_row};
use crate::error::{Error, Result};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

/// ggml tensor types this reader dequantises, by their GGUF ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// The name users know the type by (`q8_0`, `q4_k`, `f16`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q4K => "q4_k",
            Q5K => "q5_k",
            Q6K => "q6_k",
        }
    }

    /// The type's id in GGUF files.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            BF16 => 30,
        }
    }

    /// By [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        use GgmlType::*;
        [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K]
            .into_iter()
            .find(|t| t.name() == name)
    }

    fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            30 => BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block)
    /// (values per block, bytes per block); 1 value per "block" for the float types.
    pub fn block(self) -> (usize, usize) {
        fn of<T: BlockType>() -> (usize, usize) {
            (T::BLOCK, T::BYTES)
        }
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => of::<Q4_0>(),
            GgmlType::Q4_1 => of::<Q4_1>(),
            GgmlType::Q5_0 => of::<Q5_0>(),
            GgmlType::Q5_1 => of::<Q5_1>(),
            GgmlType::Q8_0 => of::<Q8_0>(),
            GgmlType::Q4K => of::<Q4K>(),
            GgmlType::Q5K => of::<Q5K>(),
            GgmlType::Q6K => of::<Q6K>(),
        }
    }
}

/// One tensor of the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Outermost first (PyTorch's order; GGUF stores the reverse).
    pub shape: Vec<usize>,
    pub kind: GgmlType,
    /// Byte range in the file.
    range: std::ops::Range<usize>,
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    by_name: std::collections::HashMap<String, usize>,
}

/// A little-endian reader over the header.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("truncated header at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "u32")?))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "u64")?))
    }
    fn len(&mut self) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        // Nothing in the header can be longer than the file: refuses absurd counts before allocating.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.b.len())
            .ok_or(format!("length {n} past the file's end"))
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }
    fn value(&mut self, kind: u32, depth: usize) -> std::result::Result<Value, String> {
        let int = |b: &[u8]| -> i64 {
            let mut a = [0u8; 8];
            a[..b.len()].copy_from_slice(b);
            // sign-extend from the value's width
            let shift = 64 - 8 * b.len() as u32;
            (i64::from_le_bytes(a) << shift) >> shift
        };
        Ok(match kind {
            0 => Value::Uint(self.take(1)?[0] as u64),
            1 => Value::Int(int(self.take(1)?)),
            2 => Value::Uint(int(self.take(2)?) as u64 & 0xFFFF),
            3 => Value::Int(int(self.take(2)?)),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(int(self.take(4)?)),
            6 => Value::Float(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth < 4 => {
                let elem = self.u32()?;
                let n = self.len()?;
                Value::Array(
                    (0..n)
                        .map(|_| self.value(elem, depth + 1))
                        .collect::<std::result::Result<_, _>>()?,
                )
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            9 => return Err("metadata arrays nested over 4 deep".into()),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: read-only map of a file the user handed us; a concurrent writer is on them.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let bad = |message: String| Error::Quantized {
            kind: "GGUF",
            message: format!("{}: {message}", path.display()),
        };
        let (version, metadata, tensors) = Self::parse(&map).map_err(bad)?;
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path: path.to_owned(),
            map,
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(b: &[u8]) -> std::result::Result<(u32, BTreeMap<String, Value>, Vec<TensorInfo>), String> {
        let mut c = Cursor { b, at: 0 };
        if c.take(4)? != b"GGUF" {
            return Err("not a GGUF file (no GGUF magic)".into());
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} (this reader takes 2 and 3)"));
        }
        let (n_tensors, n_kv) = (c.len()?, c.len()?);
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let kind = c.u32()?;
            let value = c.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let dims = c.u32()? as usize;
            if dims > 8 {
                return Err(format!("tensor `{name}` has {dims} dimensions"));
            }
            let mut shape = (0..dims).map(|_| c.len()).collect::<std::result::Result<Vec<_>, _>>()?;
            shape.reverse();
            let id = c.u32()?;
            let kind = GgmlType::from_id(id).ok_or(format!("tensor `{name}` has ggml type {id}, not supported"))?;
            let offset = c.len()?;
            infos.push((name, shape, kind, offset));
        }
        let align = match metadata.get("general.alignment") {
            Some(Value::Uint(a)) if *a > 0 && a.is_power_of_two() => *a as usize,
            Some(other) => return Err(format!("general.alignment {other:?}")),
            None => 32,
        };
        let data = c.at.div_ceil(align) * align;
        let tensors = infos
            .into_iter()
            .map(|(name, shape, kind, offset)| {
                let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                let (block, bytes) = kind.block();
                let size = count
                    .filter(|n| n % block == 0)
                    .and_then(|n| (n / block).checked_mul(bytes))
                    .ok_or(format!("tensor `{name}`: {shape:?} is not whole {kind:?} blocks"))?;
                let start = data.checked_add(offset).ok_or("offset overflow")?;
                let end = start.checked_add(size).filter(|&e| e <= b.len());
                let end = end.ok_or(format!("tensor `{name}` runs past the end of the file"))?;
                Ok(TensorInfo {
                    name,
                    shape,
                    kind,
                    range: start..end,
                })
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok((version, metadata, tensors))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(*self.by_name.get(name)?)
    }

    /// The tensor's stored bytes (blocks as they are in the file).
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| &self.map[t.range.clone()])
    }

    /// Drops the tensor's mapped pages from the process once its values are copied out (as
    /// safetensors' loader does: otherwise a loading model is resident twice).
    pub(crate) fn release(&self, name: &str) {
        let Some(t) = self.tensor(name) else { return };
        #[cfg(unix)]
        // SAFETY: the map is read-only and file-backed, and callers hold no reference into the
        // range (they copied its values out), so dropping the pages loses nothing.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, t.range.start, t.range.len())
        };
        #[cfg(not(unix))]
        let _ = t;
    }

    /// Whether a file starts with GGUF's magic.
    pub fn sniff(path: &Path) -> bool {
        use std::io::Read;
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && &magic == b"GGUF"
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor as whole values and one f32 scale per 32 consecutive values (16 for Q6_K), in
    /// the file's order, when its type is one that is stored so (Q8_0, Q5_0, Q4_0, Q6_K); `None`
    /// otherwise.
    pub fn symmetric(&self, name: &str) -> Option<(Vec<i8>, Vec<f32>)> {
        let t = self.tensor(name)?;
        let b = &self.map[t.range.clone()];
        match t.kind {
            GgmlType::Q8_0 => symmetric_row::<Q8_0>(b),
            GgmlType::Q5_0 => symmetric_row::<Q5_0>(b),
            GgmlType::Q4_0 => symmetric_row::<Q4_0>(b),
            GgmlType::Q6K => symmetric_row::<Q6K>(b),
            _ => None,
        }
    }

    /// The tensor's values in f32 (its shape is [`TensorInfo::shape`]).
    pub fn f32_values(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| Error::Quantized {
            kind: "GGUF",
            message: format!("{}: no tensor `{name}`", self.path.display()),
        })?;
        let b = &self.map[t.range.clone()];
        let pairs = || b.chunks_exact(2).map(|p| [p[0], p[1]]);
        Ok(match t.kind {
            GgmlType::F32 => b
                .chunks_exact(4)
                .map(|p| f32::from_le_bytes([p[0], p[1], p[2], p[3]]))
                .collect(),
            GgmlType::F16 => pairs().map(|p| f16::from_le_bytes(p).to_f32()).collect(),
            GgmlType::BF16 => pairs().map(|p| bf16::from_le_bytes(p).to_f32()).collect(),
            GgmlType::Q4_0 => dequantize_row::<Q4_0>(b)?,
            GgmlType::Q4_1 => dequantize_row::<Q4_1>(b)?,
            GgmlType::Q5_0 => dequantize_row::<Q5_0>(b)?,
            GgmlType::Q5_1 => dequantize_row::<Q5_1>(b)?,
            GgmlType::Q8_0 => dequantize_row::<Q8_0>(b)?,
            GgmlType::Q4K => dequantize_row::<Q4K>(b)?,
            GgmlType::Q5K => dequantize_row::<Q5K>(b)?,
            GgmlType::Q6K => dequantize_row::<Q6K>(b)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/quants")
    }

    /// `tiny.gguf` (written by the `gguf` package's GGUFWriter): metadata, names, shapes, types
    /// and every value bit for bit as `gguf.quants` dequantises them.
    #[test]
    fn reads_what_gguf_writes() {
        let f = GgufFile::open(&dir().join("tiny.gguf")).expect("open tiny.gguf");
        assert_eq!(f.version, 3);
        assert_eq!(f.metadata.get("test.answer"), Some(&Value::Uint(42)));
        assert_eq!(f.metadata.get("general.name"), Some(&Value::Str("tiny".into())));
        let text = std::fs::read_to_string(dir().join("tiny.gguf.json")).expect("json");
        let want: serde_json::Value = serde_json::from_str(&text).expect("json");
        let want = want.as_object().expect("object");
        assert_eq!(f.tensors.len(), want.len());
        for (name, w) in want {
            let t = f.tensor(name).expect("tensor listed");
            let shape: Vec<usize> = serde_json::from_value(w["shape"].clone()).expect("shape");
            assert_eq!(t.shape, shape, "{name}");
            assert_eq!(
                format!("{:?}", t.kind).replace('K', "_K"),
                w["type"].as_str().expect("type")
            );
            let values: Vec<f32> = serde_json::from_value(w["values"].clone()).expect("values");
            let got = f.f32_values(name).expect("values");
            assert_eq!(got.len(), values.len(), "{name}");
            for (g, v) in got.iter().zip(&values) {
                assert_eq!(g.to_bits(), v.to_bits(), "{name}: {g} vs {v}");
            }
        }
    }

    /// Damaged files are named errors, not panics: every truncation of the header and a wrong
    /// magic.
    #[test]
    fn damaged_files_are_errors() {
        let bytes = std::fs::read(dir().join("tiny.gguf")).expect("read");
        for cut in (0..600).step_by(7) {
            let e = GgufFile::parse(&bytes[..cut]).expect_err("truncated");
            assert!(e.contains("truncated") || e.contains("past"), "cut at {cut}: {e}");
        }
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert!(GgufFile::parse(&wrong).expect_err("magic").contains("magic"));
    }
}
