"""The package as users get it: `python -m build` makes a wheel and an sdist, and the wheel, installed into a
fresh venv, runs `safebasin --help`, `--version` and a one-step train from its own files, not from src/."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import safebasin
from conftest import ROOT

pytest.importorskip("build")  # in the test extra; skipped only where someone installed without it
pytest.importorskip("setuptools")


def run(*cmd, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env | {"COLUMNS": "200"},
                          timeout=600)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """Wheel and sdist built from a copy of the sources (the build writes egg-info where it runs)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # --no-isolation: setuptools is already here, and an isolated build would fetch it from the network every run
    r = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "dist"


def test_wheel_and_sdist_hold_the_package_and_one_version(dist):
    v = safebasin.__version__
    wheel, sdist = dist / f"safebasin-{v}-py3-none-any.whl", dist / f"safebasin-{v}.tar.gz"
    assert sorted(p.name for p in dist.iterdir()) == sorted([wheel.name, sdist.name])
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"safebasin-{v}.dist-info/METADATA").decode()
        entry = z.read(f"safebasin-{v}.dist-info/entry_points.txt").decode()
    for module in ("cli.py", "ema.py", "integrations/transformers.py", "detox/adlm.py", "dialogue/methods.py"):
        assert f"safebasin/{module}" in names, module
    assert f"Version: {v}\n" in meta and "Requires-Dist: rank-bm25>=0.2.2" in meta
    assert "Requires-Dist: trl>=0.20; extra == \"test\"" in meta and "Requires-Dist: build>=1.2; extra == \"test\"" in meta
    assert "safebasin = safebasin.cli:main" in entry
    with tarfile.open(sdist) as t:
        members = set(t.getnames())
    assert {f"safebasin-{v}/{p}" for p in ("pyproject.toml", "README.md", "src/safebasin/__init__.py")} <= members


def test_wheel_in_a_fresh_venv_runs_help_version_and_a_train_step(dist, tmp_path, tiny_model_dir, data_dir):
    v = safebasin.__version__
    venv = tmp_path / "venv"
    r = run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert r.returncode == 0, r.stderr
    py, exe = venv / "bin" / "python", venv / "bin" / "safebasin"
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # the dependencies already installed here, appended after the venv's own site-packages; a .pth line only adds
    # a path (the .pth files in it, like the editable install's, are not run), so src/ cannot leak in
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", dist / f"safebasin-{v}-py3-none-any.whl")
    assert r.returncode == 0, r.stderr

    where = run(py, "-c", "import importlib.metadata as m, safebasin; print(safebasin.__file__); print(m.version('safebasin'))",
                cwd=tmp_path)
    path, version = where.stdout.split()
    assert Path(path).is_relative_to(site) and version == v, where.stdout

    helped = run(exe, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("train", "eval", "sweep", "--version"))
    shown = run(exe, "--version", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip() == f"safebasin {v}"

    out = tmp_path / "run"
    trained = run(exe, "train", "--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--steps", 1,
                  "--batch-size", 2, "--max-examples", 8, "--heldout-size", 4, "--max-seq-len", 64, "--ema-beta", 0.9,
                  "--output-dir", out, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (out / "model" / "model.safetensors").is_file() and (out / "raw" / "model.safetensors").is_file()
    assert (out / "train_log.jsonl").read_text().count("\n") == 1
