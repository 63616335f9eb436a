//! The web playground at `/`, driven in headless Chromium (Debian's chromium + chromedriver):
//! key entry, text-to-image with live progress, image-to-image with a mask painted with the
//! mouse, the gallery and "reuse these settings", an error shown in the page.
//! `IMAGEN_SCREENSHOTS=docs` also writes the screenshots the docs show.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::harness::Env;
use crate::webdriver::{Browser, available};

fn shot(b: &Browser, name: &str) {
    b.eval("window.scrollTo(0, 0)", json!([]));
    let png = b.screenshot();
    let img = image::load_from_memory(&png).expect("screenshot is a PNG");
    assert!(img.width() >= 800, "a full window");
    if let Some(dir) = std::env::var_os("IMAGEN_SCREENSHOTS") {
        let path = PathBuf::from(dir).join(format!("playground-{name}.png"));
        std::fs::write(&path, png).expect("screenshot");
    }
}

/// The page's newest result image: (src, natural width, natural height) once loaded.
const RESULT: &str = "const i = document.querySelector('#results img.result-image');
    return i && i.complete && i.naturalWidth > 0 ? [i.src, i.naturalWidth, i.naturalHeight] : null";

#[test]
fn playground_generates_in_a_real_browser() {
    let Some((driver, chromium)) = available() else {
        return;
    };
    let env = Env::new();
    std::fs::create_dir_all(env.models.join("tiny-sd15/taesd")).expect("taesd");
    crate::harness::copy_dir(
        &crate::harness::fixture("tiny-taesd"),
        &env.models.join("tiny-sd15/taesd"),
    );
    let key = env.key("pro", &[]);
    let s = env.serve();
    let page = s.get("/", None);
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|c| c.starts_with("text/html")));
    assert!(page.header("content-security-policy").is_some());
    for f in ["playground.js", "mask.js", "playground.css"] {
        assert_eq!(s.get(&format!("/playground/{f}"), None).status, 200, "{f}");
    }
    s.get("/playground/nope.js", None).assert_error(404, "not_found");

    let b = Browser::start(driver, chromium);
    b.open(&s.url("/"));
    b.fill("#key", &key);
    b.click("#save-key");
    b.wait_for(
        "the model list",
        "return [...document.querySelectorAll('#model option')].some(o => o.value === 'tiny-sd15')",
    );
    b.eval(
        "const m = document.querySelector('#model'); m.value = 'tiny-sd15'; m.dispatchEvent(new Event('change'));",
        json!([]),
    );
    // the model's defaults fill the form
    assert_eq!(b.eval("return document.querySelector('#width').value", json!([])), "64");
    b.fill("#prompt", "a red fox in the snow");
    b.fill("#steps", "6");
    b.fill("#seed", "1234");
    // Euler: a UNet step per step (the model's own PNDM adds one)
    b.eval("document.querySelector('#scheduler').value = 'euler'", json!([]));
    // every status the page shows on the way
    b.eval(
        "const s = document.querySelector('#status'); window.statuses = [];
         new MutationObserver(() => window.statuses.push(s.textContent)).observe(s, {childList: true, characterData: true, subtree: true});",
        json!([]),
    );
    b.click("#generate");
    let (src, w, h) = match b.wait_for("the result image", RESULT) {
        Value::Array(v) => (v[0].as_str().unwrap_or_default().to_owned(), v[1].clone(), v[2].clone()),
        v => panic!("{v}"),
    };
    assert_eq!((w, h), (json!(64), json!(64)));
    // progress ran to the end and previews came over the event stream
    let statuses = b.eval("return window.statuses", json!([]));
    assert!(
        statuses
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t.as_str().is_some_and(|t| t.starts_with("step ") && t.ends_with("/6"))),
        "steps shown as they ran: {statuses}"
    );
    assert_eq!(
        b.eval(
            "const p = document.querySelector('#progress'); return p.value === p.max",
            json!([])
        ),
        true
    );
    let status = b.eval("return document.querySelector('#status').textContent", json!([]));
    assert!(status.as_str().is_some_and(|t| t.contains("done")), "{status}");
    let preview = b.eval("return document.querySelector('#preview').src", json!([]));
    assert!(
        preview.as_str().is_some_and(|p| p.starts_with("data:image/png")),
        "{preview}"
    );
    // what the page shows is the server's image of that request
    let listed = s.get("/v1/generations?limit=1", Some(&key)).json();
    let made = &listed["data"][0];
    assert_eq!(made["parameters"]["prompt"], "a red fox in the snow");
    assert_eq!(made["parameters"]["seed"], 1234);
    assert_eq!(made["parameters"]["steps"], 6);
    assert_eq!(made["parameters"]["scheduler"], "euler");
    let shown = s.get(&src, None);
    assert_eq!(shown.status, 200, "{src}");
    let stored = s.get(made["images"][0]["url"].as_str().expect("url"), None);
    assert_eq!(shown.body, stored.body, "the page shows the generated image");
    b.wait_for("the gallery card", "return [...document.querySelectorAll('#gallery .gallery-item')].some(c => c.textContent.includes('a red fox'))");
    shot(&b, "txt2img");

    // image-to-image with a mask painted over the left half
    let tmp = tempfile::tempdir().expect("tmp");
    let init = tmp.path().join("init.png");
    image::RgbImage::from_fn(96, 96, |x, y| image::Rgb([(x * 2) as u8, (y * 2) as u8, 128]))
        .save(&init)
        .expect("init png");
    b.click("#mode-img2img");
    b.fill("#init-image", init.to_str().expect("path"));
    b.wait_for(
        "the image in the editor",
        "const c = document.querySelector('#image-canvas'); return c && c.width > 0",
    );
    b.fill("#prompt", "a fox, masked");
    b.stroke("#mask-canvas", &[(-20, -20), (-10, 0), (-20, 20), (-5, 10)]);
    let painted = b.eval(
        "const c = document.querySelector('#mask-canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
         let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n",
        json!([]),
    );
    assert!(
        painted.as_u64().is_some_and(|n| n > 20),
        "the stroke painted the mask: {painted}"
    );
    b.eval("document.querySelector('#results').replaceChildren()", json!([]));
    b.click("#generate");
    b.wait_for("the masked result", RESULT);
    let listed = s.get("/v1/generations?limit=1", Some(&key)).json();
    let p = &listed["data"][0]["parameters"];
    assert_eq!(p["prompt"], "a fox, masked");
    assert_eq!(p["mask"], true, "{p}");
    assert!(p["strength"].as_f64().is_some(), "{p}");
    shot(&b, "img2img-mask");

    // "reuse these settings" on the first (text-to-image) generation fills the form again
    b.fill("#prompt", "something else");
    b.fill("#seed", "");
    b.eval(
        "const card = [...document.querySelectorAll('#gallery .gallery-item')].find(c => c.textContent.includes('a red fox'));
         card.querySelector('button.reuse').click();",
        json!([]),
    );
    assert_eq!(
        b.eval("return document.querySelector('#prompt').value", json!([])),
        "a red fox in the snow"
    );
    assert_eq!(
        b.eval("return document.querySelector('#seed').value", json!([])),
        "1234"
    );
    assert_eq!(b.eval("return document.querySelector('#steps').value", json!([])), "6");
    assert_eq!(
        b.eval("return document.querySelector('#img2img-fields').hidden", json!([])),
        true
    );

    // a request the server refuses: its message, in the page
    b.fill("#width", "7");
    b.click("#generate");
    let error = b.wait_for("the error", "return document.querySelector('#error').textContent");
    assert!(error.as_str().is_some_and(|e| e.contains("width")), "{error}");
    shot(&b, "error");
    // no script errors (the refused request itself is logged by the browser as a failed load)
    let errors: Vec<String> = b
        .console_errors()
        .into_iter()
        .filter(|e| !e.contains("Failed to load resource"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
