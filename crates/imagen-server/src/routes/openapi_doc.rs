//! The served OpenAPI document: the committed one (`openapi.json`, written for the default
//! limits and every model family) with this server's limits in its bounds and, where no
//! installed model takes a parameter or a sampler, without it. So generators and fuzzers
//! (schemathesis) see what this server accepts; the defaults give the committed file back.

use serde_json::{Value, json};

use super::files::OPENAPI;
use crate::config::Limits;

/// The three contract request schemas.
const REQUESTS: [&str; 3] = ["TextToImageRequest", "ImageToImageRequest", "VariationsRequest"];
/// Parameters only T5-conditioned models take (FLUX, SD3), FLUX only, SD3 only.
const T5_ONLY: &[&str] = &["max_sequence_length"];
const FLUX_ONLY: &[&str] = &["true_cfg_scale"];
const SD3_ONLY: &[&str] = &[
    "skip_guidance_layers",
    "skip_layer_guidance_scale",
    "skip_layer_guidance_start",
    "skip_layer_guidance_stop",
];
/// Samplers only flow-matching models take.
const FLOW_ONLY_SAMPLERS: &[&str] = &["heun"];

/// A `WxH` pattern for sides that are multiples of 8 up to `max_side`.
fn size_pattern(max_side: usize) -> String {
    let sides: Vec<String> = (1..=max_side / 8).map(|i| (i * 8).to_string()).collect();
    let one = format!("({})", sides.join("|"));
    format!("^(auto|{one}x{one})$")
}

/// The document for these limits and the installed models' families.
pub fn document(limits: &Limits, families: &[&str]) -> Value {
    let mut doc: Value = serde_json::from_str(OPENAPI).unwrap_or(Value::Null);
    let has = |f: &str| families.contains(&f);
    let (flux, sd3) = (has("flux"), has("sd3"));
    let mut drop: Vec<&str> = Vec::new();
    if !flux && !sd3 {
        drop.extend(T5_ONLY);
    }
    if !flux {
        drop.extend(FLUX_ONLY);
    }
    if !sd3 {
        drop.extend(SD3_ONLY);
    }
    let schemas = &mut doc["components"]["schemas"];
    for name in REQUESTS {
        let props = &mut schemas[name]["properties"];
        for k in ["width", "height"] {
            props[k]["maximum"] = json!(limits.max_side);
        }
        for k in ["prompt", "negative_prompt"] {
            props[k]["maxLength"] = json!(limits.max_prompt_chars);
        }
        props["steps"]["maximum"] = json!(limits.max_steps);
        props["num_images"]["maximum"] = json!(limits.max_images);
        if let Some(p) = props.as_object_mut() {
            for k in &drop {
                p.remove(*k);
            }
        }
        if !flux
            && !sd3
            && let Some(e) = props["scheduler"]["enum"].as_array_mut()
        {
            e.retain(|s| !FLOW_ONLY_SAMPLERS.contains(&s.as_str().unwrap_or_default()));
        }
    }
    for props in [
        "/paths/~1v1~1images~1generations/post/requestBody/content/application~1json/schema/properties",
        "/components/schemas/OpenAIEditForm/properties",
        "/components/schemas/OpenAIVariationForm/properties",
    ] {
        if let Some(p) = doc.pointer_mut(props) {
            p["n"]["maximum"] = json!(limits.max_images);
            p["prompt"]["maxLength"] = json!(limits.max_prompt_chars);
            p["size"]["pattern"] = json!(size_pattern(limits.max_side));
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_family_give_the_committed_document() {
        let committed: Value = serde_json::from_str(OPENAPI).expect("openapi.json");
        let all = document(&Limits::default(), &["sd15", "sdxl", "flux", "sd3"]);
        assert_eq!(all, committed);
    }

    #[test]
    fn limits_and_families_narrow_it() {
        let limits = Limits {
            max_side: 128,
            max_steps: 4,
            max_images: 2,
            ..Limits::default()
        };
        let doc = document(&limits, &["sd15"]);
        let t2i = &doc["components"]["schemas"]["TextToImageRequest"]["properties"];
        assert_eq!(
            (t2i["width"]["maximum"].as_u64(), t2i["steps"]["maximum"].as_u64()),
            (Some(128), Some(4))
        );
        assert!(t2i.get("true_cfg_scale").is_none() && t2i.get("skip_guidance_layers").is_none());
        assert!(
            !t2i["scheduler"]["enum"]
                .as_array()
                .expect("enum")
                .contains(&json!("heun"))
        );
        let form = &doc["components"]["schemas"]["OpenAIEditForm"]["properties"];
        assert_eq!(form["n"]["maximum"], 2);
        assert_eq!(
            form["size"]["pattern"],
            "^(auto|(8|16|24|32|40|48|56|64|72|80|88|96|104|112|120|128)x(8|16|24|32|40|48|56|64|72|80|88|96|104|112|120|128))$"
        );
        // FLUX alone keeps its own parameters and heun
        let flux = document(&Limits::default(), &["flux"]);
        let t2i = &flux["components"]["schemas"]["TextToImageRequest"]["properties"];
        assert!(t2i.get("true_cfg_scale").is_some() && t2i.get("max_sequence_length").is_some());
        assert!(t2i.get("skip_guidance_layers").is_none());
    }
}
