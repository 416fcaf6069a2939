"""Installed as a user would: a wheel of this checkout, non-editable, in a fresh virtual environment,
run from an unrelated folder. Only `specserve` lands in site-packages, the bundled suite is found,
`specserve serve` answers, and `bench serve` (an HTTP client) never loads torch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest
from live_harness import wait_until

ROOT = Path(__file__).resolve().parents[1]


def _checkout_copy(dest: Path) -> Path:
    """The files a clean checkout has (tracked, or new and not ignored), without build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to copy")
    tmp = tmp_path_factory.mktemp("install")
    src = _checkout_copy(tmp / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist")],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    wheel = next((tmp / "dist").glob("specserve-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300, capture_output=True)  # fmt: skip
    # the dependencies come from the test environment (no download), added after the install so
    # pip never saw this checkout's editable install there
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(site, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"wheel": wheel, "bin": venv / "bin", "cwd": elsewhere, "site": Path(site)}


def _run(installed, *argv: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(list(argv), cwd=cwd or installed["cwd"], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_the_wheel_holds_only_specserve(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert {n.split("/")[0] for n in names} == {
        "specserve",
        installed["wheel"].name.split("-py")[0] + ".dist-info",
    }
    assert "specserve/models/default_suite/target/config.json" in names
    assert "specserve/cli/main.py" in names and "specserve/tests/conftest.py" not in names


def test_imports_from_an_unrelated_folder(installed):
    py = str(installed["bin"] / "python")
    out = _run(installed, py, "-c", "import specserve.server, specserve; print(specserve.__file__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(installed["site"]))
    for bare in ("models", "decoding", "server", "metrics", "bench", "cli"):
        out = _run(installed, py, "-c", f"import {bare}")
        assert out.returncode != 0 and f"No module named '{bare}'" in out.stderr
    # a user's own models/ folder stays theirs: no specserve module answers to `models`
    own = installed["cwd"].parent / "project"
    (own / "models").mkdir(parents=True)
    (own / "models" / "__init__.py").write_text("MINE = True\n")
    out = _run(installed, py, "-c", "import models, specserve.models.loading; print(models.MINE)", cwd=own)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_generate_uses_the_bundled_suite(installed):
    out = _run(installed, str(installed["bin"] / "specserve"), "generate", "--prompt", "def f():",
               "--max-new-tokens", "6", "--json", "--method", "draft", "--log-level", "INFO",
               "--compile", "off")  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["stats"]["completion_tokens"] == len(result["token_ids"]) > 0
    suite = str(installed["site"] / "specserve" / "models" / "default_suite")
    assert f"loaded {suite}/target" in out.stderr and f"loaded {suite}/draft" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_and_bench_serve_loads_no_torch(installed, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"SPECSERVE_LOG_LEVEL": "WARNING"}
    argv = [str(installed["bin"] / "specserve"), "serve", "--port", str(port), "--compile", "off"]
    proc = subprocess.Popen(
        argv, cwd=installed["cwd"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: _healthy(url) or proc.poll() is not None, "the server to load", 120)
        assert proc.poll() is None, proc.stderr.read()
        body = {"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0}
        r = httpx.post(f"{url}/v1/completions", json=body | {"model": "specserve-default-suite"}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        argv = ["bench", "serve", "--url", url, "--concurrency", "1", "--num-requests", "2", "--max-tokens",
                "4", "--warmup", "0", "--no-plots", "--out-dir", str(tmp_path)]  # fmt: skip
        code = (
            "import sys\nfrom specserve.cli.main import main\n"
            f"rc = main({argv!r})\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
            "sys.exit(rc)\n"
        )
        out = _run(installed, str(installed["bin"] / "python"), "-c", code)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "[]"
        assert json.loads((tmp_path / "serve.json").read_text())["benchmark"] == "serve"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
