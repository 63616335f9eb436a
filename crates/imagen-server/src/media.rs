//! Images in and out: decoding client images with size limits (no decompression bombs), base64 /
//! data URIs / opt-in URL fetching, and encoding results as PNG, JPEG or WebP.

use std::io::Cursor;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use image::{DynamicImage, GrayImage, ImageFormat, ImageReader, Luma, RgbImage};

use crate::config::Fetch;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "png" => OutputFormat::Png,
            "jpeg" | "jpg" => OutputFormat::Jpeg,
            "webp" => OutputFormat::Webp,
            _ => return None,
        })
    }

    pub fn ext(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }
}

pub fn encode(img: &RgbImage, format: OutputFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Cursor::new(Vec::new());
    let f = match format {
        OutputFormat::Png => ImageFormat::Png,
        OutputFormat::Jpeg => ImageFormat::Jpeg,
        // image's WebP encoder is lossless: the pixels survive exactly.
        OutputFormat::Webp => ImageFormat::WebP,
    };
    img.write_to(&mut out, f)?;
    Ok(out.into_inner())
}

/// Decodes PNG / JPEG / WebP bytes into RGB, refusing images over `max_pixels` before
/// allocating them.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ApiError> {
    Ok(decode_any(bytes, max_pixels)?.to_rgb8())
}

/// A repaint mask: where the image is transparent (OpenAI's convention: alpha 0 = edit here),
/// or, without an alpha channel, where it is white. Returns white = repaint.
pub fn decode_mask(bytes: &[u8], max_pixels: u64) -> Result<GrayImage, ApiError> {
    let img = decode_any(bytes, max_pixels)?;
    Ok(if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            Luma([255 - rgba.get_pixel(x, y)[3]])
        })
    } else {
        img.to_luma8()
    })
}

fn decode_any(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ApiError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_request(format!("image: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(ApiError::bad_request("image: not a PNG, JPEG or WebP file"));
    };
    let mut limited = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // A square of max_pixels, and the allocation that needs (RGBA 16-bit at worst).
    let side = (max_pixels as f64).sqrt().ceil() as u32;
    limits.max_image_width = Some(side.max(1) * 4);
    limits.max_image_height = Some(side.max(1) * 4);
    limits.max_alloc = Some(max_pixels * 8);
    limited.limits(limits.clone());
    let (w, h) = limited
        .into_dimensions()
        .map_err(|e| ApiError::bad_request(format!("image: {e}")))?;
    if w as u64 * h as u64 > max_pixels {
        return Err(
            ApiError::bad_request(format!("image: {w}x{h} is over the limit of {max_pixels} pixels"))
                .with_details(serde_json::json!({"field": "image", "limit": max_pixels})),
        );
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| ApiError::bad_request(format!("image: {e}")))
}

/// The bytes of an `image` field: base64, a `data:` URI, or (when enabled) an http(s) URL.
/// Blocking (URL fetches): call from a blocking thread.
pub fn image_bytes(field: &str, fetch: &Fetch) -> Result<Vec<u8>, ApiError> {
    let field = field.trim();
    if field.starts_with("http://") || field.starts_with("https://") {
        return fetch_url(field, fetch);
    }
    let data = match field.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::bad_request("image: malformed data URI"))?;
            if !meta.ends_with(";base64") {
                return Err(ApiError::bad_request("image: data URIs must be base64"));
            }
            data
        }
        None => field,
    };
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("image: invalid base64 ({e})")))
}

fn fetch_url(url: &str, fetch: &Fetch) -> Result<Vec<u8>, ApiError> {
    let field = |m: String| ApiError::bad_request(m).with_details(serde_json::json!({"field": "image"}));
    if !fetch.enabled {
        return Err(field(
            "image: fetching URLs is disabled on this server; send the image as base64".into(),
        ));
    }
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = if url.starts_with("https") { 443 } else { 80 };
    let addrs: Vec<IpAddr> = if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_socket_addrs()
    } else {
        (host_port.trim_start_matches('[').trim_end_matches(']'), default_port).to_socket_addrs()
    }
    .map_err(|e| field(format!("image: cannot resolve {host_port:?}: {e}")))?
    .map(|a| a.ip())
    .collect();
    if addrs.is_empty() {
        return Err(field(format!("image: {host_port:?} has no address")));
    }
    // Checked at resolution time; redirects are not followed, so a public URL cannot bounce to
    // an internal one. (A DNS answer that changes between this check and the connection is
    // not covered.)
    if !fetch.allow_private && addrs.iter().any(|ip| !is_public(*ip)) {
        return Err(field(format!(
            "image: {host_port:?} is not a public address; fetching it is not allowed"
        )));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(fetch.timeout_ms)))
        .max_redirects(0)
        .build()
        .into();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| field(format!("image: fetching {url}: {e}")))?;
    resp.into_body()
        .with_config()
        .limit(fetch.max_bytes)
        .read_to_vec()
        .map_err(|e| field(format!("image: reading {url}: {e} (limit {} bytes)", fetch.max_bytes)))
}

/// Globally routable: not loopback, private, link-local, CGNAT, multicast, unspecified or
/// documentation space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        assert!(is_public("93.184.216.34".parse().expect("ip")));
    }

    #[test]
    fn bombs_and_garbage_are_bad_requests() {
        // A 20000x20000 PNG header: refused from the header, before any allocation.
        let img = RgbImage::new(1, 1);
        let mut png = encode(&img, OutputFormat::Png).expect("png");
        png[16..20].copy_from_slice(&20000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20000u32.to_be_bytes());
        assert!(decode(&png, 1 << 20).is_err());
        assert!(decode(b"not an image", 1 << 20).is_err());
        let fetch = Fetch::default();
        assert!(image_bytes("%%%", &fetch).is_err());
        assert!(
            image_bytes("http://127.0.0.1/x.png", &fetch).is_err(),
            "fetching is off by default"
        );
        let ok = image_bytes(&format!("data:image/png;base64,{}", STANDARD.encode(&png)), &fetch).expect("b64");
        assert_eq!(ok, png);
    }
}
