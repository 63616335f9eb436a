//! A1111's PNG metadata: its images carry their settings as a `parameters` text chunk
//! ("prompt\nNegative prompt: …\nSteps: 20, Sampler: Euler a, …"), which `POST
//! /sdapi/v1/png-info` reads back (and front-ends use to "send to txt2img"). Images from the
//! A1111 routes carry it; png-info reads any PNG's text chunks.

use serde_json::{Map, Value};

/// A1111's infotext for one image of a generation.
pub struct Infotext<'a> {
    pub prompt: &'a str,
    pub negative: &'a str,
    pub steps: usize,
    pub sampler: &'a str,
    pub scheduler: &'a str,
    pub cfg: f64,
    pub seed: u64,
    pub size: (usize, usize),
    pub model: &'a str,
    pub denoising: Option<f64>,
}

impl Infotext<'_> {
    /// A1111's `create_infotext` layout.
    pub fn render(&self) -> String {
        let mut out = self.prompt.to_owned();
        if !self.negative.is_empty() {
            out.push_str(&format!("\nNegative prompt: {}", self.negative));
        }
        let mut fields = vec![
            format!("Steps: {}", self.steps),
            format!("Sampler: {}", self.sampler),
            format!("Schedule type: {}", self.scheduler),
            format!("CFG scale: {}", self.cfg),
            format!("Seed: {}", self.seed),
            format!("Size: {}x{}", self.size.0, self.size.1),
            format!("Model: {}", self.model),
        ];
        if let Some(d) = self.denoising {
            fields.push(format!("Denoising strength: {d}"));
        }
        fields.push(format!("Version: imagen {}", env!("CARGO_PKG_VERSION")));
        out.push('\n');
        out.push_str(&fields.join(", "));
        out
    }
}

/// `png` with a text chunk `key` = `text` inserted after its header (Latin-1 `tEXt` when the
/// text allows, else uncompressed UTF-8 `iTXt`, as PIL writes them). Not a PNG: unchanged.
pub fn with_text(png: &[u8], key: &str, text: &str) -> Vec<u8> {
    // signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 crc)
    const AFTER_IHDR: usize = 8 + 25;
    if png.len() < AFTER_IHDR || &png[12..16] != b"IHDR" {
        return png.to_vec();
    }
    let (kind, data): (&[u8; 4], Vec<u8>) = match text.chars().map(u8::try_from).collect::<Result<Vec<u8>, _>>() {
        Ok(latin1) => (b"tEXt", [key.as_bytes(), &[0], &latin1].concat()),
        Err(_) => (b"iTXt", [key.as_bytes(), &[0, 0, 0, 0, 0], text.as_bytes()].concat()),
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(&data);
    let mut out = Vec::with_capacity(png.len() + data.len() + 12);
    out.extend_from_slice(&png[..AFTER_IHDR]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(&data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// Every text chunk of a PNG (tEXt, zTXt, iTXt), in file order; `None`: not a readable PNG.
pub fn texts(png: &[u8]) -> Option<Vec<(String, String)>> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().ok()?;
    // text chunks after the image data are read once the image has been
    let mut buf = vec![0; reader.output_buffer_size()?];
    reader.next_frame(&mut buf).ok()?;
    let _ = reader.finish();
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    out.extend(
        info.compressed_latin1_text
            .iter()
            .filter_map(|t| Some((t.keyword.clone(), t.get_text().ok()?))),
    );
    out.extend(
        info.utf8_text
            .iter()
            .filter_map(|t| Some((t.keyword.clone(), t.get_text().ok()?))),
    );
    Some(out)
}

/// A1111's `parse_generation_parameters`: `Prompt`, `Negative prompt`, then each `Key: value`
/// of the last line (values as text; `Size` also as `Size-1` and `Size-2`).
pub fn parse(info: &str) -> Map<String, Value> {
    let mut lines: Vec<&str> = info.trim().lines().collect();
    let last = match lines.last() {
        Some(l) if l.contains("Steps: ") => lines.pop().unwrap_or_default(),
        _ => "",
    };
    let (mut prompt, mut negative, mut in_negative) = (Vec::new(), Vec::new(), false);
    for line in lines {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(line);
        }
    }
    let mut out = Map::new();
    out.insert("Prompt".into(), prompt.join("\n").into());
    out.insert("Negative prompt".into(), negative.join("\n").into());
    for field in split_fields(last) {
        let Some((k, v)) = field.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        if k == "Size"
            && let Some((w, h)) = v.split_once('x')
        {
            out.insert("Size-1".into(), w.into());
            out.insert("Size-2".into(), h.into());
        }
        out.insert(k.into(), v.into());
    }
    out
}

/// `a: 1, b: "x, y", c: 2` → the three fields (commas inside quotes kept).
fn split_fields(line: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(line[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < line.len() {
        out.push(line[start..].trim());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infotext_round_trips_through_a_png() {
        let text = Infotext {
            prompt: "a café\nat night",
            negative: "blurry",
            steps: 4,
            sampler: "DPM++ 2M",
            scheduler: "Karras",
            cfg: 7.5,
            seed: 42,
            size: (64, 32),
            model: "tiny-sd15",
            denoising: Some(0.5),
        }
        .render();
        let mut png = Vec::new();
        image::RgbImage::new(4, 4)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        let tagged = with_text(&png, "parameters", &text);
        let found = texts(&tagged).expect("readable");
        assert_eq!(found, [("parameters".to_owned(), text.clone())]);
        let p = parse(&text);
        assert_eq!(p["Prompt"], "a café\nat night");
        assert_eq!(p["Negative prompt"], "blurry");
        assert_eq!(p["Steps"], "4");
        assert_eq!(p["Sampler"], "DPM++ 2M");
        assert_eq!(p["CFG scale"], "7.5");
        assert_eq!((&p["Size-1"], &p["Size-2"]), (&"64".into(), &"32".into()));
        assert_eq!(p["Denoising strength"], "0.5");
        // non-Latin-1 text goes in an iTXt chunk
        let tagged = with_text(&png, "parameters", "猫");
        assert_eq!(
            texts(&tagged).expect("readable"),
            [("parameters".to_owned(), "猫".to_owned())]
        );
        assert!(texts(b"not a png").is_none());
    }
}
