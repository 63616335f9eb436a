//! The CLIP tokenizer against transformers' `CLIPTokenizer` on the real vocabulary.

use imagen_models::load::tokenizer::ClipTokenizer;
use serde_json::Value;

use crate::common::fixture;

#[test]
fn astronaut_prompt_has_the_known_ids() {
    let tok = ClipTokenizer::from_dir(&fixture("tiny-sd15/tokenizer")).expect("tokenizer");
    let ids = tok
        .encode("a photograph of an astronaut riding a horse")
        .expect("encode");
    assert_eq!(&ids[..10], &[49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]);
    assert_eq!(ids.len(), 77);
    assert!(ids[10..].iter().all(|&t| t == 49407), "SD 1.x pads with <|endoftext|>");
}

/// Every golden prompt (punctuation, unicode, `&`, digits, a prompt over 77 tokens) for both pad
/// conventions: SD 1.x pads with `<|endoftext|>`, SD 2.x with `!` (id 0).
#[test]
fn matches_transformers_on_all_golden_prompts() {
    let text = std::fs::read_to_string(fixture("golden/tokens.json")).expect("tokens.json");
    let golden: Value = serde_json::from_str(&text).expect("json");
    for (key, folder) in [("sd15", "tiny-sd15"), ("sd2", "tiny-sd2")] {
        let tok = ClipTokenizer::from_dir(&fixture(folder).join("tokenizer")).expect("tokenizer");
        let cases = golden[key].as_array().expect("cases");
        assert!(cases.len() >= 6);
        for case in cases {
            let prompt = case["prompt"].as_str().expect("prompt");
            let want: Vec<u32> = case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            assert_eq!(tok.encode(prompt).expect("encode"), want, "{key}: {prompt:?}");
        }
    }
}
