#!/usr/bin/env python3
"""Dynamic batching: jobs per minute with 1 and with C concurrent clients, each client sending
synchronous text-to-image requests (different prompts and seeds, same size/steps/sampler) one
after another, against one `imagen serve` (SQLite, its embedded worker) run once with
`[queue] max_batch = 1` and once with `max_batch = B`, back to back in one run.

    python3 tools/bench_batching.py --bin target/release/imagen                      # tiny test model
    python3 tools/bench_batching.py --bin target/release/imagen --model-dir /tmp/sd15-full \\
        --size 256 --steps 4 --jobs 8                                                  # full-size SD 1.5

Prints one JSON line per (max_batch, clients) with jobs/min. Standard library only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def post(base, key, body, timeout=3600):
    req = urllib.request.Request(
        base + "/v1/text-to-image",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def run(a, max_batch, clients, model_dir):
    tmp = tempfile.mkdtemp(prefix="imagen-bench-batch-")
    models, data = os.path.join(tmp, "models"), os.path.join(tmp, "data")
    os.makedirs(models)
    name = os.path.basename(model_dir.rstrip("/"))
    os.symlink(os.path.abspath(model_dir), os.path.join(models, name))
    key = subprocess.run([a.bin, "keys", "create", "--data-dir", data, "--plan", "enterprise"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    config = os.path.join(tmp, "imagen.toml")
    with open(config, "w") as f:
        f.write(f"[queue]\nmax_batch = {max_batch}\n")
    cmd = [a.bin, "serve", "--bind", "127.0.0.1:0", "--models-dir", models, "--data-dir", data,
           "--config", config] + (["--dtype", a.dtype] if a.dtype else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().strip().removeprefix("imagen listening on ")
        body = lambda n: {"model": name, "prompt": f"a photograph, variation {n}", "seed": n,
                          "steps": a.steps, "width": a.size, "height": a.size, "scheduler": "euler_a",
                          "response_format": "b64_json"}
        post(base, key, body(10_000))  # warm-up: the model loaded, run once
        nxt, lock, sizes = [0], threading.Lock(), []

        def client():
            while True:
                with lock:
                    n = nxt[0]
                    nxt[0] += 1
                if n >= a.jobs:
                    return
                out = post(base, key, body(n))
                assert out["status"] == "completed", out
                with lock:
                    sizes.append(out.get("batch_size", 1))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        return {"model": name, "size": a.size, "steps": a.steps, "max_batch": max_batch,
                "clients": clients, "jobs": a.jobs, "seconds": round(elapsed, 2),
                "jobs_per_min": round(60 * a.jobs / elapsed, 1),
                "mean_batch": round(sum(sizes) / len(sizes), 2)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imagen"))
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "tests/fixtures/tiny-sd15"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--dtype", default=None)
    a = ap.parse_args()
    for max_batch, clients in [(1, 1), (1, a.clients), (a.max_batch, 1), (a.max_batch, a.clients)]:
        print(json.dumps(run(a, max_batch, clients, a.model_dir)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
