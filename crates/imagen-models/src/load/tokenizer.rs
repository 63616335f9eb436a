//! CLIP's BPE tokenizer from a diffusers `tokenizer/` folder (`vocab.json` + `merges.txt`),
//! padded and truncated as diffusers calls it (`padding="max_length"`, `truncation=True`).

use std::path::Path;

use serde_json::{Value, json};
use tokenizers::models::bpe::BPE;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};

use crate::error::{Error, Result};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// A special token in `tokenizer_config.json` is a string or `{"content": ..}`.
fn token_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        obj => obj.get("content")?.as_str().map(str::to_owned),
    }
}

impl ClipTokenizer {
    /// Load from a diffusers `tokenizer/` folder. The pad token comes from its
    /// `tokenizer_config.json` or `special_tokens_map.json` (`<|endoftext|>` for SD 1.x, `!` for
    /// SD 2.x and SDXL's second tokenizer).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        for f in [&vocab, &merges] {
            if !f.is_file() {
                return Err(Error::Folder(format!(
                    "{}: missing (a CLIP tokenizer needs vocab.json and merges.txt)",
                    f.display()
                )));
            }
        }
        let read =
            |name: &str| -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok() };
        let configs: Vec<Value> = ["tokenizer_config.json", "special_tokens_map.json"]
            .iter()
            .filter_map(|n| read(n))
            .collect();
        let pad = configs
            .iter()
            .find_map(|c| token_field(c, "pad_token"))
            .unwrap_or_else(|| EOS.into());
        let max_len = configs
            .iter()
            .find_map(|c| c.get("model_max_length")?.as_u64())
            .filter(|&n| n <= 1024)
            .unwrap_or(77) as usize;
        Self::from_files(&vocab, &merges, &pad, max_len)
    }

    pub fn from_files(vocab: &Path, merges: &Path, pad_token: &str, max_len: usize) -> Result<Self> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .unk_token(EOS.into())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(tok_err)?;
        // Exactly the normalizer and pre-tokenizer of openai/clip-vit-large-patch14's tokenizer.json.
        let normalizer: NormalizerWrapper = serde_json::from_value(json!({
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]
        }))
        .map_err(tok_err)?;
        let pre_tokenizer: PreTokenizerWrapper = serde_json::from_value(json!({
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                    "behavior": "Removed",
                    "invert": true
                },
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]
        }))
        .map_err(tok_err)?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_normalizer(Some(normalizer));
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        // A pad token such as "!" becomes a special token too, so a literal "!" in a prompt
        // encodes to its single id, as transformers does for SD 2.x.
        let mut specials = vec![AddedToken::from(BOS, true), AddedToken::from(EOS, true)];
        if pad_token != BOS && pad_token != EOS {
            specials.push(AddedToken::from(pad_token, true));
        }
        inner.add_special_tokens(&specials);
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("token {t:?} is not in the vocabulary")))
        };
        Ok(ClipTokenizer {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(pad_token)?,
            max_len,
            inner,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// How many `max_len − 2`-token chunks `text` takes (at least 1).
    pub fn num_chunks(&self, text: &str) -> Result<usize> {
        let n = self.inner.encode(text, false).map_err(tok_err)?.get_ids().len();
        Ok(n.div_ceil(self.max_len.saturating_sub(2).max(1)).max(1))
    }

    /// Long prompts the A1111/ComfyUI way: the tokens cut into chunks of `max_len − 2`, each
    /// wrapped as `[bos, chunk…, eos, pad…]`, then empty chunks up to `chunks` (so a prompt and
    /// its negative line up). With `chunks` = 1 this is [`encode`](Self::encode).
    pub fn encode_chunks(&self, text: &str, chunks: usize) -> Result<Vec<Vec<u32>>> {
        if chunks <= 1 {
            return Ok(vec![self.encode(text)?]);
        }
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let per = self.max_len.saturating_sub(2).max(1);
        let body = enc.get_ids();
        Ok((0..chunks)
            .map(|c| {
                let part = body.get(c * per..((c + 1) * per).min(body.len())).unwrap_or(&[]);
                let mut ids = Vec::with_capacity(self.max_len);
                ids.push(self.bos);
                ids.extend_from_slice(part);
                ids.push(self.eos);
                ids.resize(self.max_len, self.pad);
                ids
            })
            .collect())
    }

    /// `[bos, tokens…, eos, pad…]`, exactly `max_len` ids; long prompts are cut to fit.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let body = enc.get_ids();
        let keep = body.len().min(self.max_len.saturating_sub(2));
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }
}
