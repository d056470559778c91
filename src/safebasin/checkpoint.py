"""Training checkpoints: weights, optimizer, scheduler, EMA, RNG states and data position.

A checkpoint is written to a temp dir and renamed into place, then `latest` is switched
atomically, so a kill in the middle of a save never leaves a corrupt latest checkpoint.
Optimizer state is loaded with `weights_only=True`: tensors and plain data, no code.
"""

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import atomic
from .errors import UserError

CKPT_DIR, LATEST = "checkpoints", "latest"
WEIGHTS, EMA_FILE, OPTIMIZER, STATE, RNG = "trainable.safetensors", "ema.safetensors", "optimizer.pt", "state.json", "rng.safetensors"


def latest(out: Path) -> Path | None:
    pointer = out / CKPT_DIR / LATEST
    if not pointer.is_file():
        return None
    path = out / CKPT_DIR / pointer.read_text().strip()
    return path if (path / STATE).is_file() else None


def save(out: Path, step: int, named_params: list[tuple[str, torch.Tensor]], optimizer, scheduler, ema, batches,
         extra: dict, keep: int) -> Path:
    root = out / CKPT_DIR
    name = f"step-{step:07d}"
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file({n: p.detach().to("cpu").contiguous() for n, p in named_params}, str(tmp / WEIGHTS))
        if ema is not None:
            save_file({str(i): s.to("cpu").contiguous() for i, s in enumerate(ema.shadow)}, str(tmp / EMA_FILE))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        save_file({"torch": torch.get_rng_state(),
                   **({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}, str(tmp / RNG))
        py_state = random.getstate()
        np_state = np.random.get_state()
        state = {"step": step, "scheduler": scheduler.state_dict(), "batches": batches.state_dict(),
                 "ema_beta": ema.beta if ema is not None else None,
                 "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
                 "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]], **extra}
        atomic.write_text(tmp / STATE, json.dumps(state))
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic.write_text(root / LATEST, name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise UserError(f"{out}: no space left on device while saving the step-{step} checkpoint; "
                            "the previous checkpoint is kept") from None
        raise
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:  # keep the last K
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load(path: Path, params: list[torch.Tensor], names: list[str], optimizer, scheduler, ema, batches) -> dict:
    """Restore everything `save` wrote into live objects; returns the state dict (step, extras)."""
    state = json.loads((path / STATE).read_text())
    weights = load_file(str(path / WEIGHTS))
    with torch.no_grad():
        for n, p in zip(names, params):
            p.copy_(weights[n])
    optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        shadow = load_file(str(path / EMA_FILE))
        ema.load_state_dict({"beta": state["ema_beta"], "shadow": [shadow[str(i)] for i in range(len(ema.shadow))]})
    batches.load_state_dict(state["batches"])
    rng = load_file(str(path / RNG))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = state["numpy_rng"]
    np.random.set_state((npr[0], np.array(npr[1], dtype=np.uint32), *npr[2:]))
    return state
