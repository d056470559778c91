import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safebasin import data, models

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = data.data_dir()
    if d is None:
        pytest.skip("../shared/data is not beside the repo")
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + byte-level BPE saved as a plain save_pretrained folder."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    models.save(models.tiny_llama(seed=0), models.tiny_tokenizer(), path)
    return path


def run_cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess: exit codes and stderr as a user sees them."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "safebasin.cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


def load_state(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))
