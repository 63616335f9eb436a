// A real `imagen serve` for the tests: the binary from IMAGEN_BIN (or the cargo target
// directory), the repository's tiny random-weight models, a fresh data directory, keys made with
// `imagen keys create`. `null` when no binary is found (the tests then skip).

import { spawn, execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

export function binary() {
  if (process.env.IMAGEN_BIN) return process.env.IMAGEN_BIN;
  const b = join(process.env.CARGO_TARGET_DIR ?? join(REPO, "target"), "debug", "imagen");
  return existsSync(b) ? b : null;
}

export async function startServer() {
  const bin = binary();
  if (!bin) return null;
  const root = mkdtempSync(join(tmpdir(), "imagen-node-"));
  const models = join(root, "models");
  const data = join(root, "data");
  for (const m of ["tiny-sd15", "tiny-sd2"]) cpSync(join(REPO, "tests/fixtures", m), join(models, m), { recursive: true });
  const proc = spawn(bin, ["serve", "--bind", "127.0.0.1:0", "--models-dir", models, "--data-dir", data], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: proc.stdout });
  const first = await new Promise((ok, fail) => {
    lines.once("line", ok);
    proc.once("exit", (code) => fail(new Error(`imagen serve exited (${code})`)));
  });
  if (!first.startsWith("imagen listening on ")) throw new Error(`unexpected first line ${first}`);
  const root_url = first.slice("imagen listening on ".length).trim();
  for (let i = 0; i < 400; i++) {
    const ok = await fetch(`${root_url}/readyz`).then((r) => r.status === 200, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    root: root_url,
    baseURL: `${root_url}/v1`,
    key(plan = "pro") {
      const out = execFileSync(bin, ["keys", "create", "--data-dir", data, "--plan", plan], { encoding: "utf8" });
      return out.trim().split("\n").pop().trim();
    },
    stop() {
      proc.kill("SIGKILL");
      rmSync(root, { recursive: true, force: true });
    },
  };
}
