#!/usr/bin/env python3
"""The job queue under load, on the tiny test model (where queue and API overhead dominate).

Starts the real binaries: with `--store sqlite`, one `imagen serve` (its embedded worker; SQLite
is one process); with `--store postgres://…`, one `imagen serve --no-worker` and `--workers N`
`imagen worker`s. Submits `--jobs` async text-to-image jobs (64², 1 step) from `--clients`
threads and reports:

- admission latency (POST until the 202 with the job id): p50 / p99 / max, in ms;
- throughput: jobs completed per second, from the first submission to the last completion
  (completion read from the store itself, not by polling the API).

    python3 tools/bench_queue.py --bin target/release/imagen --store sqlite --jobs 200
    python3 tools/bench_queue.py --bin target/release/imagen --store postgres://postgres@127.0.0.1:54329/bench --workers 4

Prints one JSON line. Standard library only (plus psycopg-free PostgreSQL reads through psql).
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def post(base, key, body):
    req = urllib.request.Request(
        base + "/v1/text-to-image",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.load(r)
        return r.status, out, time.perf_counter() - t


def done_count(store, data_dir):
    if store == "sqlite":
        db = sqlite3.connect(os.path.join(data_dir, "imagen.db"), timeout=10)
        try:
            return db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0]
        finally:
            db.close()
    out = subprocess.run(
        ["psql", store, "-tAc", "SELECT count(*) FROM jobs WHERE state = 'done'"],
        capture_output=True, text=True, check=True,
    )
    return int(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imagen"))
    ap.add_argument("--store", default="sqlite")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--keys", type=int, default=4, help="enterprise keys (1,000/min each)")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="imagen-bench-queue-")
    models, data = os.path.join(tmp, "models"), os.path.join(tmp, "data")
    shutil.copytree(os.path.join(ROOT, "tests/fixtures/tiny-sd15"), os.path.join(models, "tiny-sd15"))
    env = dict(os.environ)
    pg = a.store != "sqlite"
    if pg:
        # a fresh database state: the bench's own schema
        subprocess.run(["psql", a.store, "-qc", "DROP SCHEMA public CASCADE; CREATE SCHEMA public"], check=True)
        env["IMAGEN_STORE_URL"] = a.store
    keys = []
    for _ in range(a.keys):
        out = subprocess.run([a.bin, "keys", "create", "--data-dir", data, "--plan", "enterprise"],
                             capture_output=True, text=True, check=True, env=env)
        keys.append(out.stdout.strip().splitlines()[-1])
    # room for every job in the queue (the default capacity, 32, answers 503 beyond)
    config = os.path.join(tmp, "imagen.toml")
    with open(config, "w") as f:
        f.write(f"[limits]\nqueue_capacity = {a.jobs + 64}\n")
    common = ["--models-dir", models, "--data-dir", data, "--config", config]
    if pg:
        common += ["--store", a.store]
    procs = []
    serve = [a.bin, "serve", "--bind", "127.0.0.1:0"] + common + (["--no-worker"] if pg else [])
    api = subprocess.Popen(serve, stdout=subprocess.PIPE, text=True, env=env)
    procs.append(api)
    base = api.stdout.readline().strip().removeprefix("imagen listening on ")
    if pg:
        for _ in range(a.workers):
            procs.append(subprocess.Popen([a.bin, "worker"] + common, env=env, stderr=subprocess.DEVNULL))
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                    if json.load(r).get("workers", 0) >= (a.workers if pg else 1):
                        break
            except urllib.error.URLError:
                pass
            time.sleep(0.1)
        # warm-up: the model loaded and run once on every worker
        for i in range(max(a.workers, 1) * 2):
            post(base, keys[0], {"prompt": "warm", "steps": 1, "width": 64, "height": 64, "seed": i})
        before = done_count(a.store, data)

        latencies, lock, nxt = [], threading.Lock(), [0]

        def client():
            while True:
                with lock:
                    n = nxt[0]
                    nxt[0] += 1
                if n >= a.jobs:
                    return
                body = {"prompt": f"job {n}", "steps": 1, "width": 64, "height": 64, "seed": n, "async": True}
                status, _, dt = post(base, keys[n % len(keys)], body)
                assert status == 202, status
                with lock:
                    latencies.append(dt)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submitted = time.perf_counter() - t0
        while done_count(a.store, data) < before + a.jobs:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        lat = sorted(latencies)
        pct = lambda p: 1000 * lat[min(len(lat) - 1, int(p * len(lat)))]
        print(json.dumps({
            "store": "postgres" if pg else "sqlite",
            "workers": a.workers if pg else 1,
            "jobs": a.jobs,
            "clients": a.clients,
            "admission_ms": {"p50": round(pct(0.5), 2), "p99": round(pct(0.99), 2),
                             "max": round(1000 * lat[-1], 2), "mean": round(1000 * statistics.mean(lat), 2)},
            "submitted_per_s": round(a.jobs / submitted, 1),
            "completed_per_s": round(a.jobs / elapsed, 2),
            "seconds": round(elapsed, 2),
        }))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
