//! The T5 tokenizer (SentencePiece Unigram) from a folder's `tokenizer.json`, called as the
//! FLUX.1 / SD3 pipelines call it: `padding="max_length"`, `truncation=True`, the end-of-text
//! token kept last by the truncation, `<pad>` after it.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad: u32,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl T5Tokenizer {
    /// Any `tokenizer.json` with a pad token (`<pad>` unless `tokenizer_config.json` names
    /// another); its normalizer, pre-tokenizer and post-processor are used as they are.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::Folder(format!(
                "{}: missing (a T5 tokenizer is read from tokenizer.json)",
                file.display()
            )));
        }
        let inner = Tokenizer::from_file(&file).map_err(|e| tok_err(format!("{}: {e}", file.display())))?;
        let pad_token = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("pad_token")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "<pad>".into());
        let pad = inner
            .token_to_id(&pad_token)
            .ok_or_else(|| tok_err(format!("{}: no pad token {pad_token:?}", file.display())))?;
        Ok(T5Tokenizer { inner, pad })
    }

    /// Token ids of `text`, exactly `max_len` of them: truncated (special tokens kept), then
    /// padded.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        if max_len == 0 {
            return Err(Error::Tokenizer("max_sequence_length must be at least 1".into()));
        }
        let mut tok = self.inner.clone();
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(tok_err)?;
        tok.with_padding(None);
        let enc = tok.encode(text, true).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        ids.resize(max_len, self.pad);
        Ok(ids)
    }
}
