"""A real `imagen serve` for the tests: the binary from `IMAGEN_BIN` (or the cargo target
directory), the repository's tiny random-weight models, a fresh data directory, API keys made
with `imagen keys create`. Skipped when no binary is found."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import httpx
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"


def _binary() -> pathlib.Path | None:
    if os.environ.get("IMAGEN_BIN"):
        return pathlib.Path(os.environ["IMAGEN_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    b = target / "debug" / "imagen"
    return b if b.exists() else None


class Server:
    def __init__(self, binary: pathlib.Path, root: pathlib.Path) -> None:
        self.binary, self.data = binary, root / "data"
        models = root / "models"
        shutil.copytree(FIXTURES / "tiny-sd15", models / "tiny-sd15")
        shutil.copytree(FIXTURES / "tiny-sd2", models / "tiny-sd2")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--bind", "127.0.0.1:0", "--models-dir", str(models), "--data-dir", str(self.data)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("imagen listening on "), line
        self.root = line.removeprefix("imagen listening on ")
        self.base_url = self.root + "/v1"
        for _ in range(400):
            try:
                if httpx.get(self.root + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("imagen serve never became ready")

    def key(self, plan: str = "pro") -> str:
        out = subprocess.run(
            [str(self.binary), "keys", "create", "--data-dir", str(self.data), "--plan", plan],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip().splitlines()[-1].strip()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def server():
    binary = _binary()
    if binary is None:
        pytest.skip("no imagen binary: set IMAGEN_BIN or build with cargo")
    with tempfile.TemporaryDirectory() as root:
        s = Server(binary, pathlib.Path(root))
        yield s
        s.stop()


@pytest.fixture(scope="session")
def key(server):
    return server.key("pro")
