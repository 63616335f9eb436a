//! Reading safetensors checkpoints (memory-mapped, any float dtype) into burn modules.
//!
//! A module is built with `Config::init(&device)`, whose parameters stay lazily uninitialised,
//! then [`load_module`] walks it with a [`ModuleMapper`], looks every parameter up in the
//! checkpoint under its diffusers name and replaces it. The random initialisers never run.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};

use super::gguf::GgufFile;
pub(crate) use super::view::{View, transpose_2d};
use crate::error::{Error, Result};

/// One memory-mapped `.safetensors` file with its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl MappedFile {
    /// Drops the mapped pages of `len` bytes at `offset` from this process's resident set once
    /// their values are copied out: they stay in the page cache, but without this a loading
    /// model counted twice (a full-size SD 1.5 512² generation from an f32 folder peaked at
    /// 7.24 GB RSS for 4.27 GB of weights). Re-reading the range faults it back in from the file.
    fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        // SAFETY: the map is read-only and file-backed, and no reference into the range outlives
        // `read_f32`'s copy, so dropping the pages loses nothing.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
        };
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only and only read through this map; as with every
        // mmap-based loader, a concurrent truncation by another process is outside our control.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let tensors = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        Ok(MappedFile {
            path: path.to_owned(),
            mmap,
            data_start: 8 + header_len,
            tensors,
        })
    }
}

/// All tensors of one component (one file, or the shards listed by an `*.index.json`): safetensors
/// or GGUF files (told apart by GGUF's magic).
pub struct Weights {
    files: Vec<MappedFile>,
    ggufs: Vec<GgufFile>,
    /// key → (GGUF?, index into `files` or `ggufs`)
    index: HashMap<String, (bool, usize)>,
}

impl Weights {
    /// Open safetensors or GGUF files; a key present in several files resolves to the first.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let (mut files, mut ggufs) = (Vec::new(), Vec::new());
        let mut index = HashMap::new();
        for p in paths {
            if GgufFile::sniff(p) {
                let g = GgufFile::open(p)?;
                for t in &g.tensors {
                    index.entry(t.name.clone()).or_insert((true, ggufs.len()));
                }
                ggufs.push(g);
            } else {
                let f = MappedFile::open(p)?;
                for k in f.tensors.keys() {
                    index.entry(k.clone()).or_insert((false, files.len()));
                }
                files.push(f);
            }
        }
        Ok(Weights { files, ggufs, index })
    }

    /// The storage types of the tensors whose keys start with `prefix`, by name (`f32`, `f16`,
    /// `bf16`, `f8_e4m3`, `q8_0`, ...), each once, sorted.
    pub fn formats(&self, prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .index
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, &(gguf, i))| {
                if gguf {
                    self.ggufs[i].tensor(k).map_or("?", |t| t.kind.name()).to_owned()
                } else {
                    self.files[i]
                        .tensors
                        .get(k)
                        .map_or("?".to_owned(), |t| dtype_name(t.dtype))
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Open a diffusers component's weights: `<stem>[.<variant>].safetensors` or its sharded
    /// form `<stem>[.<variant>].safetensors.index.json`. Variants are tried in order; `None`
    /// stands for the plain file name.
    pub fn open_component(dir: &Path, stem: &str, variants: &[Option<&str>]) -> Result<Self> {
        for variant in variants {
            let name = match variant {
                Some(v) => format!("{stem}.{v}.safetensors"),
                None => format!("{stem}.safetensors"),
            };
            let single = dir.join(&name);
            if single.is_file() {
                return Self::open(&[single]);
            }
            // sharded: `x.fp16.safetensors.index.json`, or as the Hub names variants'
            // indexes, `x.safetensors.index.fp16.json`
            let hub_index = variant.map(|v| dir.join(format!("{stem}.safetensors.index.{v}.json")));
            for index in std::iter::once(dir.join(format!("{name}.index.json"))).chain(hub_index) {
                if index.is_file() {
                    return Self::open(&shards_of(&index)?);
                }
            }
        }
        let tried: Vec<String> = variants
            .iter()
            .map(|v| match v {
                Some(v) => format!("{stem}.{v}.safetensors"),
                None => format!("{stem}.safetensors"),
            })
            .collect();
        Err(Error::Folder(format!(
            "{}: no weights found (looked for {}, or their .index.json shards)",
            dir.display(),
            tried.join(", ")
        )))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        match *self.index.get(key)? {
            (true, i) => self.ggufs[i].tensor(key).map(|t| t.shape.as_slice()),
            (false, i) => self.files[i].tensors.get(key).map(|t| t.shape.as_slice()),
        }
    }

    /// A GGUF tensor stored as whole values with one scale per 32 or 16 (Q8_0, Q5_0, Q4_0, Q6_K), as
    /// [`GgufFile::symmetric`] reads it: kept that way in memory, it is half the size of bf16.
    /// `None` for every other tensor.
    pub fn read_symmetric(&self, key: &str) -> Option<(Vec<i8>, Vec<f32>)> {
        let &(gguf, fi) = self.index.get(key)?;
        if !gguf {
            return None;
        }
        let out = self.ggufs[fi].symmetric(key)?;
        self.ggufs[fi].release(key);
        Some(out)
    }

    /// The tensor's values converted to f32, in the file's (row-major) order; block-quantized
    /// GGUF tensors dequantised as `gguf.quants` does.
    pub fn read_f32(&self, component: &'static str, key: &str) -> Result<Vec<f32>> {
        let Some(&(gguf, fi)) = self.index.get(key) else {
            return Err(Error::MissingTensor {
                component,
                key: key.to_owned(),
            });
        };
        if gguf {
            let values = self.ggufs[fi].f32_values(key);
            self.ggufs[fi].release(key);
            return values;
        }
        let f = &self.files[fi];
        let info = &f.tensors[key];
        let (start, end) = info.data_offsets;
        let bytes = f
            .mmap
            .get(f.data_start + start..f.data_start + end)
            .ok_or_else(|| Error::Safetensors {
                path: f.path.clone(),
                message: format!("tensor `{key}` lies outside the file"),
            })?;
        let n: usize = info.shape.iter().product();
        let width = info.dtype.bitsize() / 8;
        if bytes.len() != n * width {
            return Err(Error::Safetensors {
                path: f.path.clone(),
                message: format!("tensor `{key}` has {} bytes for shape {:?}", bytes.len(), info.shape),
            });
        }
        let out = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F8_E4M3 => bytes.iter().map(|&b| f8_e4m3fn(b)).collect(),
            // E5M2 is the upper byte of an f16
            Dtype::F8_E5M2 => bytes
                .iter()
                .map(|&b| half::f16::from_bits((b as u16) << 8).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            other => {
                return Err(Error::DType {
                    component,
                    key: key.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        f.release(f.data_start + start, end - start);
        if matches!(info.dtype, Dtype::F8_E4M3 | Dtype::F8_E5M2) {
            return self.unscale_fp8(component, key, out, &info.shape);
        }
        Ok(out)
    }

    /// ComfyUI's "scaled fp8" checkpoints (`sd3.5_large_fp8_scaled`, `flux1-dev-fp8-scaled`)
    /// store `weight / scale` with the scale beside it as `….scale_weight`: one per tensor, or
    /// one per output row. Plain fp8 files have no such key and pass through.
    fn unscale_fp8(
        &self,
        component: &'static str,
        key: &str,
        mut values: Vec<f32>,
        shape: &[usize],
    ) -> Result<Vec<f32>> {
        let Some(stem) = key.strip_suffix("weight") else {
            return Ok(values);
        };
        let scale_key = format!("{stem}scale_weight");
        if !self.contains(&scale_key) {
            return Ok(values);
        }
        let scale = self.read_f32(component, &scale_key)?;
        let rows = shape.first().copied().unwrap_or(1).max(1);
        match scale.len() {
            1 => values.iter_mut().for_each(|v| *v *= scale[0]),
            n if n == rows => {
                let per_row = values.len() / rows;
                for (row, s) in values.chunks_mut(per_row.max(1)).zip(&scale) {
                    row.iter_mut().for_each(|v| *v *= s);
                }
            }
            n => {
                return Err(Error::Folder(format!(
                    "{scale_key}: {n} scales for a tensor of shape {shape:?} (one, or one per row)"
                )));
            }
        }
        Ok(values)
    }
}

/// An fp8 E4M3FN value (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities,
/// `S.1111.111` is NaN), as PyTorch's `float8_e4m3fn` and the fp8 checkpoints use it.
pub fn f8_e4m3fn(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0xf, b & 0x7);
    if e == 0xf && m == 0x7 {
        return f32::NAN;
    }
    let v = if e == 0 {
        m as f32 / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7)
    };
    sign * v
}

/// safetensors' dtype by the names [`Weights::formats`] uses.
fn dtype_name(d: Dtype) -> String {
    match d {
        Dtype::F8_E4M3 => "f8_e4m3".into(),
        Dtype::F8_E5M2 => "f8_e5m2".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.to_owned(),
        source,
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<&String> = parsed.weight_map.values().collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Load every float parameter of `module` from `weights`.
///
/// `keys(path)` turns a module path (`down_blocks.0.resnets.1.conv1.weight`, already in PyTorch
/// naming: norm `gamma`/`beta` become `weight`/`bias`) into the checkpoint keys to try, in order.
/// Linear weights are transposed from PyTorch's `[out, in]`. Fails on the first missing or
/// mis-shaped tensor, naming it.
pub fn load_module<M: Module>(
    module: M,
    weights: &Weights,
    component: &'static str,
    keys: &dyn Fn(&str) -> Vec<String>,
    device: &Device,
) -> Result<M> {
    let mut loader = Loader {
        weights,
        component,
        keys,
        device,
        path: Vec::new(),
        error: None,
    };
    let module = module.map(&mut loader);
    match loader.error {
        Some(e) => Err(e),
        None => Ok(crate::ops::prepare_weights(module)),
    }
}

struct Loader<'a> {
    weights: &'a Weights,
    component: &'static str,
    keys: &'a dyn Fn(&str) -> Vec<String>,
    device: &'a Device,
    /// (field or index name, type of the container that holds it)
    path: Vec<(String, String)>,
    error: Option<Error>,
}

impl Loader<'_> {
    fn load<const D: usize>(&mut self, expected: &[usize]) -> Result<Tensor<D>> {
        let (name, container) = self.path.last().cloned().unwrap_or_default();
        let is_norm = matches!(
            container.as_str(),
            "Struct:GroupNorm" | "Struct:LayerNorm" | "Struct:RmsNorm"
        );
        let leaf = match name.as_str() {
            "gamma" if is_norm => "weight",
            "beta" if is_norm => "bias",
            other => other,
        };
        let module_path = module_path(&self.path[..self.path.len().saturating_sub(1)], leaf);
        let candidates = (self.keys)(&module_path);
        let Some(key) = candidates.iter().find(|k| self.weights.contains(View::parse(k).0)) else {
            return Err(Error::MissingTensor {
                component: self.component,
                key: candidates.into_iter().next().unwrap_or(module_path),
            });
        };
        // burn's Linear stores [in, out]; PyTorch's [out, in].
        let transpose = container == "Struct:Linear" && leaf == "weight" && D == 2;
        let want: Vec<usize> = if transpose {
            vec![expected[1], expected[0]]
        } else {
            expected.to_vec()
        };
        let (base, view) = View::parse(key);
        let stored = self.weights.shape(base).unwrap_or_default().to_vec();
        let found = view.shape(&stored);
        if strip_unit_dims(&found) != strip_unit_dims(&want) {
            return Err(Error::ShapeMismatch {
                component: self.component,
                key: key.clone(),
                expected: want,
                found,
            });
        }
        if transpose
            && view.row_span(stored.first().copied().unwrap_or(0)).is_some()
            && let Some(t) = self.quantized(base, view, &stored, &want)
        {
            return Ok(t);
        }
        let mut values = view.apply(self.weights.read_f32(self.component, base)?, &stored);
        if transpose {
            values = transpose_2d(&values, want[0], want[1]);
        }
        let data = TensorData::new(values, expected.to_vec());
        Ok(crate::ops::prepare_weight(
            &container,
            leaf,
            Tensor::from_data(data, self.device),
        ))
    }
}

impl Loader<'_> {
    /// A linear weight (`[d_out, d_in]` in the file) kept block-quantized on the device, when the
    /// file stores it so and the route keeps such weights ([`crate::ops::quantized_linear_weight`]).
    /// A row view (FLUX's fused q/k/v) keeps its rows' blocks: ggml's blocks run along rows.
    fn quantized<const D: usize>(&self, key: &str, view: View, stored: &[usize], want: &[usize]) -> Option<Tensor<D>> {
        let &[d_out, d_in] = want else { return None };
        if D != 2 || !crate::ops::Routes::current().keep_quantized {
            return None;
        }
        let (start, count) = view.row_span(*stored.first()?)?;
        let (q, scales) = self.weights.read_symmetric(key)?;
        let rows = stored[0];
        let (qr, sr) = (q.len() / rows, scales.len() / rows);
        if count != d_out || qr != d_in {
            return None;
        }
        let q = q[start * qr..(start + count) * qr].to_vec();
        let scales = scales[start * sr..(start + count) * sr].to_vec();
        let t = crate::ops::quantized_linear_weight(&q, &scales, d_out, d_in, self.device)?;
        // D is 2 (checked above); a dispatch tensor carries its own shape.
        Some(Tensor::from_dispatch(t.into_dispatch()))
    }
}

/// The dotted module path of a parameter from a `ModuleMapper`'s (field, container) stack.
/// Enum variants (e.g. `Projection::Linear`) are not part of the checkpoint's names.
pub(crate) fn module_path(stack: &[(String, String)], leaf: &str) -> String {
    let mut parts: Vec<&str> = stack
        .iter()
        .filter(|(_, container)| !container.starts_with("Enum:"))
        .map(|(n, _)| n.as_str())
        .collect();
    parts.push(leaf);
    parts.join(".")
}

/// Shapes equal up to trailing size-1 dimensions (a 1×1 conv weight stored for a linear layer
/// and vice versa, as SD 2 and LDM checkpoints do).
fn strip_unit_dims(s: &[usize]) -> &[usize] {
    let mut end = s.len();
    while end > 1 && s[end - 1] == 1 {
        end -= 1;
    }
    &s[..end]
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_owned(), container_type.to_owned()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let expected = param.lazy_shape().to_vec();
        match self.load::<D>(&expected) {
            Ok(tensor) => {
                let id = param.id;
                param.transform_for_load(tensor, id)
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ComfyUI's scaled fp8: the stored value times its `scale_weight`
    /// (`make_lowp_dit_fixtures.py`; values printed by PyTorch).
    #[test]
    fn scaled_fp8_multiplies_back() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/single-file/tiny-sd35-fp8-scaled.safetensors");
        let w = Weights::open(&[file]).expect("open");
        let v = w
            .read_f32("transformer", "model.diffusion_model.context_embedder.weight")
            .expect("read");
        let want = [-0.060_758_676f32, -0.273_414_05, 0.364_552_05, -0.151_896_69];
        for (g, e) in v.iter().zip(want) {
            assert!((g - e).abs() < 1e-6, "{g} vs {e}");
        }
    }

    #[test]
    fn transpose_is_exact() {
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        assert_eq!(transpose_2d(&v, 2, 3), vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn unit_dims() {
        assert_eq!(strip_unit_dims(&[4, 8, 1, 1]), &[4, 8]);
        assert_eq!(strip_unit_dims(&[1]), &[1]);
        assert_ne!(strip_unit_dims(&[4, 8, 3, 3]), strip_unit_dims(&[4, 8]));
    }
}

#[cfg(test)]
mod fp8_tests {
    use super::*;

    /// Every fp8 bit pattern decodes as PyTorch decodes it (`tools/reference/make_fp8_fixture.py`).
    #[test]
    fn fp8_matches_pytorch() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/quants");
        let w = Weights::open(&[dir.join("fp8.safetensors")]).expect("open");
        let text = std::fs::read_to_string(dir.join("fp8.json")).expect("json");
        let want: HashMap<String, Vec<serde_json::Value>> = serde_json::from_str(&text).expect("parse");
        assert_eq!(w.formats(""), ["f8_e4m3", "f8_e5m2"]);
        for (key, values) in want {
            let got = w.read_f32("test", &key).expect("read");
            assert_eq!(got.len(), 256);
            for (i, (g, v)) in got.iter().zip(&values).enumerate() {
                match v {
                    serde_json::Value::Null => assert!(g.is_nan(), "{key}[{i}] {g}"),
                    serde_json::Value::String(s) => assert_eq!(*g, s.parse::<f32>().expect("inf"), "{key}[{i}]"),
                    n => assert_eq!(*g as f64, n.as_f64().expect("number"), "{key}[{i}]"),
                }
            }
        }
    }
}
