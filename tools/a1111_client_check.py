#!/usr/bin/env python3
"""The real AUTOMATIC1111 client (`webuiapi` from PyPI) against a running `imagen serve`, as a
user of it would call it (`--api-auth`: HTTP Basic with the API key as the password).

    pip install webuiapi
    imagen serve --models-dir tests/fixtures --data-dir /tmp/d &      # models: tiny-sd15, tiny-sd2, …
    python3 tools/a1111_client_check.py --port 8080 --key imk_… [--model tiny-sd15]

Prints one line per call and `ok` at the end; exits non-zero on the first failure.
"""

import argparse
import base64
import io
import sys

import webuiapi
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--key", required=True)
    ap.add_argument("--model", default="tiny-sd15")
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()

    api = webuiapi.WebUIApi(host=a.host, port=a.port, sampler="Euler a", steps=4)
    api.set_auth("webui", a.key)

    models = [m["title"] for m in api.get_sd_models()]
    print("sd-models:", models)
    assert a.model in models, models
    print("samplers:", [s["name"] for s in api.get_samplers()])
    print("schedulers:", [s["name"] for s in api.get_schedulers()])
    api.util_set_model(a.model)
    current = api.util_get_current_model()
    print("current model:", current)
    assert current == a.model, current

    r = api.txt2img(prompt="a lighthouse at dusk", negative_prompt="blurry", seed=1234,
                    cfg_scale=7, width=a.size, height=a.size, steps=4)
    print("txt2img:", r.image.size, "seed", r.info["seed"], "model", r.info["sd_model_name"])
    assert r.image.size == (a.size, a.size) and r.info["seed"] == 1234
    again = api.txt2img(prompt="a lighthouse at dusk", negative_prompt="blurry", seed=1234,
                        cfg_scale=7, width=a.size, height=a.size, steps=4)
    assert again.image.tobytes() == r.image.tobytes(), "same seed, same image"

    r2 = api.txt2img(prompt="two cats", seed=-1, batch_size=2, width=a.size, height=a.size,
                     sampler_name="DPM++ 2M", scheduler="karras", steps=4)
    print("txt2img batch_size 2, DPM++ 2M karras, seed -1:", len(r2.images), "seeds", r2.info["all_seeds"])
    assert len(r2.images) == 2

    i = api.img2img(images=[r.image], prompt="a lighthouse in snow", denoising_strength=0.6,
                    seed=5, width=a.size, height=a.size, steps=4)
    print("img2img:", i.image.size, "seed", i.info["seed"])
    assert i.image.size == (a.size, a.size)

    # the PNG carries A1111's `parameters` text (PIL reads it as A1111 does); png-info parses it
    params = r.image.info.get("parameters", "")
    assert "Seed: 1234" in params, params
    buf = io.BytesIO()
    meta = PngInfo()
    meta.add_text("parameters", params)
    r.image.save(buf, "PNG", pnginfo=meta)
    info = api.session.post(f"{api.baseurl}/png-info",
                            json={"image": base64.b64encode(buf.getvalue()).decode()}).json()
    print("png-info:", {k: info["parameters"][k] for k in ("Seed", "Steps", "Sampler", "Model")})
    assert info["parameters"]["Seed"] == "1234"

    # inpainting with webuiapi's defaults (inpainting_fill 0: fill) and latent noise
    mask = Image.new("L", (a.size, a.size), 0)
    mask.paste(255, (a.size // 4, a.size // 4, 3 * a.size // 4, 3 * a.size // 4))
    for fill in (0, 2):
        m = api.img2img(images=[r.image], mask_image=mask, inpainting_fill=fill, prompt="a boat",
                        seed=5, width=a.size, height=a.size, steps=4)
        print(f"img2img with a mask, inpainting_fill {fill}:", m.image.size)
    api.refresh_checkpoints()
    print("refresh-checkpoints: ok,", [m["model_name"] for m in api.get_sd_models()])

    p = api.get_progress()
    print("progress:", {k: p[k] for k in ("progress", "eta_relative")}, "job_count", p["state"]["job_count"])
    api.interrupt()
    print("interrupt: ok")
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
