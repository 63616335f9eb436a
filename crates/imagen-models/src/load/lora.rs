//! LoRA files (kohya sd-scripts and diffusers/PEFT names) and merging them into a loaded model.
//!
//! Merging returns a new module: only the patched weights are new tensors, the rest are shared
//! with the base (burn tensors are reference-counted), so the base model stays untouched and a
//! request without LoRA after one with it computes exactly the base output.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::view::View;
use super::weights::Weights;
use crate::error::{Error, Result};

/// Which network a LoRA entry patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Unet,
    /// A diffusion transformer (FLUX: diffusers' `transformer.…` or kohya's BFL names).
    Transformer,
    /// 0: `text_encoder`, 1: `text_encoder_2` (SDXL).
    TextEncoder(u8),
}

/// One low-rank update: W += scale · (alpha / rank) · up · down.
#[derive(Debug, Clone)]
struct Pair {
    down: Option<(Vec<usize>, Vec<f32>)>,
    up: Option<(Vec<usize>, Vec<f32>)>,
    alpha: Option<f32>,
}

#[derive(Debug)]
pub struct LoraFile {
    pub path: PathBuf,
    /// (target, module name) → update. Names are diffusers module paths, dotted for PEFT files
    /// and with `_` for `.` for kohya files (`kohya` says which).
    entries: HashMap<(Target, String), Pair>,
    kohya: bool,
}

const COMPONENT: &str = "lora";

impl LoraFile {
    pub fn open(path: &Path) -> Result<Self> {
        let weights = Weights::open(&[path.to_owned()])?;
        let alphas = peft_alphas(path);
        let mut entries: HashMap<(Target, String), Pair> = HashMap::new();
        let mut kohya = false;
        let keys: Vec<String> = weights.keys().map(str::to_owned).collect();
        for key in keys {
            let Some((target, module, part)) = parse_key(&key) else {
                return Err(Error::Folder(format!(
                    "{}: unrecognised LoRA tensor {key:?} (kohya `lora_unet_…`/`lora_te_…` or diffusers/PEFT \
                     `unet.….lora_A.weight` names are supported)",
                    path.display()
                )));
            };
            kohya |= key.starts_with("lora_");
            let entry = entries.entry((target, module)).or_insert(Pair {
                down: None,
                up: None,
                alpha: None,
            });
            let value = || -> Result<(Vec<usize>, Vec<f32>)> {
                let shape = weights.shape(&key).unwrap_or_default().to_vec();
                Ok((shape, weights.read_f32(COMPONENT, &key)?))
            };
            match part {
                Part::Down => entry.down = Some(value()?),
                Part::Up => entry.up = Some(value()?),
                Part::Alpha => entry.alpha = value()?.1.first().copied(),
            }
        }
        for ((target, _), pair) in entries.iter_mut() {
            if pair.alpha.is_none() {
                pair.alpha = alphas.get(target).copied();
            }
        }
        if let Some(((_, m), _)) = entries.iter().find(|(_, p)| p.down.is_none() || p.up.is_none()) {
            return Err(Error::Folder(format!(
                "{}: {m} lacks its up or down half",
                path.display()
            )));
        }
        Ok(LoraFile {
            path: path.to_owned(),
            entries,
            kohya,
        })
    }

    /// Whether `path` is a LoRA file (every tensor name parses), without reading the tensors,
    /// and the family it is for: `flux` (it patches a transformer), `sdxl` (a second text
    /// encoder), else `sd`.
    pub fn probe(path: &Path) -> Option<&'static str> {
        let weights = Weights::open(&[path.to_owned()]).ok()?;
        let (mut xl, mut dit, mut any) = (false, false, false);
        for key in weights.keys() {
            let (target, _, _) = parse_key(key)?;
            xl |= target == Target::TextEncoder(1);
            dit |= target == Target::Transformer;
            any = true;
        }
        any.then_some(if dit {
            "flux"
        } else if xl {
            "sdxl"
        } else {
            "sd"
        })
    }

    fn find(&self, target: Target, module: &str) -> Option<&Pair> {
        let name = if self.kohya {
            module.replace('.', "_")
        } else {
            module.to_owned()
        };
        self.entries.get(&(target, name))
    }

    /// Whether it has updates for `target`.
    pub fn patches(&self, target: Target) -> bool {
        self.count(target) > 0
    }

    /// Every entry for `target`, to check they all found a weight.
    fn count(&self, target: Target) -> usize {
        self.entries.keys().filter(|(t, _)| *t == target).count()
    }
}

enum Part {
    Down,
    Up,
    Alpha,
}

/// `(target, module name, part)` of a LoRA tensor name.
fn parse_key(key: &str) -> Option<(Target, String, Part)> {
    if let Some(rest) = key.strip_prefix("lora_") {
        let (name, part) = rest.rsplit_once('.')?;
        let (name, part) = match part {
            "alpha" => (name, Part::Alpha),
            "weight" => {
                let (n, which) = name.rsplit_once('.')?;
                match which {
                    "lora_down" => (n, Part::Down),
                    "lora_up" => (n, Part::Up),
                    _ => return None,
                }
            }
            _ => return None,
        };
        // kohya's FLUX files: Black Forest Labs' module names under `lora_unet_`
        const BFL: [&str; 9] = [
            "double_blocks_",
            "single_blocks_",
            "final_layer_",
            "img_in",
            "txt_in",
            "time_in_",
            "vector_in_",
            "guidance_in_",
            "distilled_guidance",
        ];
        if let Some(m) = name.strip_prefix("unet_")
            && BFL.iter().any(|p| m.starts_with(p))
        {
            return Some((Target::Transformer, m.to_owned(), part));
        }
        for (prefix, target) in [
            ("transformer_", Target::Transformer),
            ("unet_", Target::Unet),
            ("te1_", Target::TextEncoder(0)),
            ("te2_", Target::TextEncoder(1)),
            ("te_", Target::TextEncoder(0)),
        ] {
            if let Some(m) = name.strip_prefix(prefix) {
                return Some((target, m.to_owned(), part));
            }
        }
        return None;
    }
    let (prefix, rest) = key.split_once('.')?;
    let target = match prefix {
        "unet" => Target::Unet,
        "transformer" => Target::Transformer,
        "text_encoder" => Target::TextEncoder(0),
        "text_encoder_2" => Target::TextEncoder(1),
        _ => return None,
    };
    let (module, part) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, Part::Down)
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        (m, Part::Up)
    } else if let Some(m) = rest.strip_suffix(".alpha") {
        (m, Part::Alpha)
    } else {
        return None;
    };
    Some((target, module.to_owned(), part))
}

/// diffusers' `lora_adapter_metadata` (`{"unet.lora_alpha": 8, "unet.r": 4, …}`) from the
/// safetensors header, when present. Without it PEFT files mean alpha = rank.
fn peft_alphas(path: &Path) -> HashMap<Target, f32> {
    let read = || -> Option<serde_json::Value> {
        let mut f = std::fs::File::open(path).ok()?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let n = u64::from_le_bytes(len).min(100 << 20) as usize;
        let mut header = vec![0u8; n];
        f.read_exact(&mut header).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
        let meta = v.get("__metadata__")?.get("lora_adapter_metadata")?.as_str()?;
        serde_json::from_str(meta).ok()
    };
    let mut out = HashMap::new();
    if let Some(meta) = read() {
        for (prefix, target) in [
            ("unet", Target::Unet),
            ("transformer", Target::Transformer),
            ("text_encoder", Target::TextEncoder(0)),
            ("text_encoder_2", Target::TextEncoder(1)),
        ] {
            if let Some(a) = meta.get(format!("{prefix}.lora_alpha")).and_then(|a| a.as_f64()) {
                out.insert(target, a as f32);
            }
        }
    }
    out
}

/// Merges `loras` (each with its scale) into `module`'s weights. `keys` is the component's
/// module-path → checkpoint-key table (the same the loader uses), so LoRA names match the
/// checkpoint's. Fails if an update fits no weight (a LoRA for another architecture).
pub fn merge<M: Module>(
    module: M,
    target: Target,
    loras: &[(&LoraFile, f32)],
    keys: &dyn Fn(&str) -> Vec<String>,
    device: &Device,
) -> Result<M> {
    let mut patcher = Patcher {
        target,
        loras,
        keys,
        device,
        path: Vec::new(),
        used: vec![std::collections::HashSet::new(); loras.len()],
        error: None,
    };
    let module = module.map(&mut patcher);
    if let Some(e) = patcher.error {
        return Err(e);
    }
    for ((lora, _), used) in loras.iter().zip(&patcher.used) {
        let (total, used) = (lora.count(target), used.len());
        if used != total {
            return Err(Error::Folder(format!(
                "{}: {} of its {total} {target:?} updates fit no weight of this model (a LoRA for another \
                 architecture, or names this loader does not know)",
                lora.path.display(),
                total - used
            )));
        }
    }
    Ok(crate::ops::prepare_weights(module))
}

struct Patcher<'a> {
    target: Target,
    loras: &'a [(&'a LoraFile, f32)],
    keys: &'a dyn Fn(&str) -> Vec<String>,
    device: &'a Device,
    path: Vec<(String, String)>,
    /// Per LoRA, the modules it patched (a fused module serves several weights).
    used: Vec<std::collections::HashSet<String>>,
    error: Option<Error>,
}

impl Patcher<'_> {
    /// The checkpoint module names of the weight being visited (without `.weight`), each with
    /// the view of that module's weight it is (a fused FLUX q/k/v's rows), if it is a Linear or
    /// Conv2d weight.
    fn module_names(&self) -> Option<(Vec<(String, View)>, bool)> {
        let (leaf, container) = self.path.last()?;
        let linear = container == "Struct:Linear";
        if leaf != "weight" || !(linear || container == "Struct:Conv2d") {
            return None;
        }
        let path = super::weights::module_path(&self.path[..self.path.len() - 1], leaf);
        let names = (self.keys)(&path)
            .iter()
            .filter_map(|k| {
                let (base, view) = View::parse(k);
                Some((base.strip_suffix(".weight")?.to_owned(), view))
            })
            .collect();
        Some((names, linear))
    }

    /// Σ scale · alpha/rank · up·down for this weight, in PyTorch layout `[out, in, …]`.
    fn delta(&mut self, shape_torch: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some((names, _)) = self.module_names() else {
            return Ok(None);
        };
        let numel: usize = shape_torch.iter().product();
        let mut total: Option<Vec<f32>> = None;
        for (i, (lora, scale)) in self.loras.iter().enumerate() {
            let Some((name, pair, view)) = names
                .iter()
                .find_map(|(n, view)| Some((n, lora.find(self.target, n)?, *view)))
            else {
                continue;
            };
            self.used[i].insert(name.clone());
            let (Some((ds, down)), Some((us, up))) = (&pair.down, &pair.up) else {
                continue;
            };
            let rank = ds[0];
            let out_full = us[0];
            let inner: usize = ds[1..].iter().product();
            // a view of a fused module's update: its rows (q of a fused q/k/v), or its halves swapped
            let out = match view {
                View::SwapHalves | View::Whole => out_full,
                v => v.row_span(out_full).map_or(0, |(_, n)| n),
            };
            if us.len() < 2 || us[1] != rank || out * inner != numel {
                return Err(Error::ShapeMismatch {
                    component: COMPONENT,
                    key: format!(
                        "{} ({})",
                        names.first().map(|(n, _)| n.clone()).unwrap_or_default(),
                        lora.path.display()
                    ),
                    expected: shape_torch.to_vec(),
                    found: vec![out, inner],
                });
            }
            let factor = scale * pair.alpha.unwrap_or(rank as f32) / rank as f32;
            // [out, rank] · [rank, inner] on the device.
            let d = Tensor::<2>::from_data(TensorData::new(down.clone(), [rank, inner]), self.device);
            let u = Tensor::<2>::from_data(TensorData::new(up.clone(), [out_full, rank]), self.device);
            let prod: Vec<f32> = (u.matmul(d) * factor)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| Error::Backend(format!("{e:?}")))?;
            let prod = view.apply(prod, &[out_full, inner]);
            total = Some(match total {
                None => prod,
                Some(t) => t.iter().zip(&prod).map(|(a, b)| a + b).collect(),
            });
        }
        Ok(total)
    }
}

impl ModuleMapper for Patcher<'_> {
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
        let Some((_, linear)) = self.module_names() else {
            return param;
        };
        let dims = param.val().dims();
        // burn's Linear is [in, out]; LoRA updates are PyTorch's [out, in].
        let torch_shape: Vec<usize> = if linear && D == 2 {
            vec![dims[1], dims[0]]
        } else {
            dims.to_vec()
        };
        match self.delta(&torch_shape) {
            Ok(None) => param,
            Ok(Some(mut delta)) => {
                if linear && D == 2 {
                    delta = super::weights::transpose_2d(&delta, torch_shape[0], torch_shape[1]);
                }
                let device = self.device.clone();
                param.map(move |w| {
                    // bf16 CPU weights (laid out for AMX) are merged in f32 and laid out again
                    // below; quantized ones are merged dequantised and stay so (re-quantizing
                    // would round the update away)
                    let w = match w.dtype() {
                        burn::tensor::DType::BF16 => w.cast(burn::tensor::DType::F32),
                        burn::tensor::DType::QFloat(_) => w.dequantize(),
                        _ => w,
                    };
                    w + Tensor::from_data(TensorData::new(delta, dims), &device)
                })
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}
