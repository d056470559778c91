"""safebasin inside a Hugging Face `Trainer` or TRL `SFTTrainer`, for users who already train with one.

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, callbacks=[EMACallback(beta=0.99)])
    trainer.add_callback(SafetyMonitorCallback(trainer, probes=10, stop=0.2))  # optional
    trainer.train()  # the model to keep: <output_dir>/ema/

The EMA is `safebasin.ema.EMA` and the probes are `safebasin.monitor.Monitor`'s, so a Trainer run averages
and probes exactly as `safebasin train` does. DDP works (every rank keeps the same θ̄, rank 0 writes);
sharded weights (FSDP, ZeRO-3) are refused, since saving θ̄ would need a gather these callbacks do not do.
"""

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from .. import atomic
from ..config import TrainConfig, build
from ..ema import EMA

log = logging.getLogger(__name__)

EMA_DIR = "ema"  # <output_dir>/ema/: θ̄ as a save_pretrained folder, the model to keep
EMA_FILE = "safebasin_ema.safetensors"  # θ̄ in float32 inside each checkpoint-N/, for resume_from_checkpoint
MONITOR_FILE = "safebasin_monitor.json"  # the monitor's start probe and schedule inside each checkpoint-N/


def unwrap(model):
    """The model under DDP / torch.compile: the one whose parameters the optimizer updates and save_pretrained writes."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The weights that move: with PEFT only the adapters, the frozen base being equal in θ̄ and θ anyway."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if any(hasattr(p, "to_local") or hasattr(p, "ds_tensor") for _, p in named):
        raise ValueError("safebasin callbacks do not support sharded weights (FSDP, ZeRO-3) yet; use DDP or ZeRO-2, "
                         "or `safebasin train`, which does")
    return named


def checkpoint_dir(args, state) -> Path:
    """The folder the Trainer writes for this step, and the one `resume_from_checkpoint=True` picks."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def resume_file(args, state, name: str) -> Path:
    path = checkpoint_dir(args, state) / name
    if not path.is_file():
        raise FileNotFoundError(f"resuming at step {state.global_step}, but {path} is missing: resume from a checkpoint "
                                "written with this callback, inside the same output_dir")
    return path


def save_folder(model, tok, folder: Path) -> None:
    """save_pretrained into a temp dir, then renamed: a reader never sees half a model (PEFT writes its adapter)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tok is not None:
        tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


class EMACallback(TrainerCallback):
    """θ̄ ← β·θ̄ + (1−β)·θ after every optimizer step, θ̄ starting at the weights training starts from.

    θ̄ is held in float32 (`on_cpu`: in CPU RAM, to spare accelerator memory). At every checkpoint it goes
    into checkpoint-N/ (so resuming continues it bit for bit) and to <output_dir>/ema/; at the end to ema/.
    """

    def __init__(self, beta: float, on_cpu: bool = False):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"ema beta must be in [0, 1], got {beta}")
        self.beta, self.on_cpu = beta, on_cpu
        self.ema: EMA | None = None
        self.model, self.named, self.saved_step = None, [], None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = unwrap(model)
        self.named = trainable(self.model)
        self.ema = EMA(self.params, self.beta, device="cpu" if self.on_cpu else None)
        if state.global_step > 0:  # resumed: the model holds the checkpoint's live weights, θ̄ is in the checkpoint
            self.load(resume_file(args, state, EMA_FILE), state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.update(self.params)

    def on_save(self, args, state, control, processing_class=None, **kwargs):
        if args.should_save:
            self.save_state(checkpoint_dir(args, state) / EMA_FILE, state.global_step)
            self.save_kept(Path(args.output_dir) / EMA_DIR, processing_class, state.global_step)

    def on_train_end(self, args, state, control, processing_class=None, **kwargs):
        if args.should_save and self.saved_step != state.global_step:  # not already written by the last checkpoint
            self.save_kept(Path(args.output_dir) / EMA_DIR, processing_class, state.global_step)

    def save_kept(self, folder: Path, tok, step: int) -> None:
        with self.ema.swapped(self.params):
            save_folder(self.model, tok, folder)
        self.saved_step = step

    def save_state(self, path: Path, step: int) -> None:
        from safetensors.torch import save_file

        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file({n: s for (n, _), s in zip(self.named, self.ema.shadow)}, str(tmp),
                  metadata={"beta": repr(self.beta), "step": str(step)})
        os.replace(tmp, path)

    def load(self, path: Path, step: int) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            saved_step = int(f.metadata()["step"])
        saved = load_file(str(path))
        names = [n for n, _ in self.named]
        if saved_step != step or sorted(saved) != sorted(names):
            raise ValueError(f"{path}: holds θ̄ of step {saved_step} for {len(saved)} tensors; resuming step {step} "
                             f"with {len(names)} trainable tensors: not this run's checkpoint")
        self.ema.load_state_dict({"beta": self.beta, "shadow": [saved[n] for n in names]})


class SafetyMonitorCallback(TrainerCallback):
    """`safebasin train --monitor` in a Trainer: the keyword-judged harmful rate of the live weights (and of θ̄,
    when an EMACallback is on the trainer) on a seeded probe sample, at the start and at `probes` steps spread
    over the run, re-spaced to stay within `budget` of the training time.

    The probes go through `trainer.log`, so they land in `state.log_history` and every tracker. `stop`: end
    training once the kept model's probe rate exceeds the start's by this much (`--monitor-stop`); ema/ then
    holds θ̄ of that step, and the earlier checkpoints the weights from before it.
    The trainer is passed in because callbacks get no handle on it, and logging goes through it.
    """

    def __init__(self, trainer, probes: int = 10, bench: str = "advbench", probe_prompts: int = 32,
                 max_new_tokens: int = 32, budget: float | None = 0.15, stop: float | None = None,
                 refusal_list: str = "gcg", data_dir: str | None = None):
        self.trainer = trainer
        self.cfg = build(TrainConfig, dict(monitor=probes, monitor_bench=bench, monitor_probe=probe_prompts,
                                           monitor_max_new_tokens=max_new_tokens, monitor_budget=budget,
                                           monitor_stop=stop, refusal_list=refusal_list, data_dir=data_dir,
                                           seed=trainer.args.seed), "SafetyMonitorCallback")
        # θ0 now, before train() runs: on a resume the Trainer loads the checkpoint's weights before any callback
        self.theta0 = [p.detach().to("cpu", copy=True) for _, p in trainable(unwrap(trainer.model))]
        self.monitor, self.stopped_at, self.step_started = None, None, 0.0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from ..monitor import Monitor  # the probe stack (generation, judges, benches) only when a monitor is used

        model = unwrap(model)
        callbacks = self.trainer.callback_handler.callbacks
        ema_cb = next((cb for cb in callbacks if isinstance(cb, EMACallback)), None)
        if ema_cb is not None and callbacks.index(ema_cb) > callbacks.index(self):
            raise ValueError("add the EMACallback before the SafetyMonitorCallback: θ̄ must be updated before it is probed")
        params = [p for _, p in trainable(model)]
        self.monitor = Monitor(self.cfg, self.trainer.accelerator, model, self.trainer.processing_class, params,
                               ema_cb.ema if ema_cb else None, state.max_steps, self.theta0, is_sharded=False)
        if state.global_step > 0:  # resumed: the same start reference and schedule as before the interruption
            self.monitor.load_state_dict(json.loads(resume_file(args, state, MONITOR_FILE).read_text(encoding="utf-8")))
        else:
            self.log(self.monitor.probe(0))

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        step, seconds = state.global_step, time.perf_counter() - self.step_started
        row = self.monitor.probe(step) if self.monitor.due(step) else {}
        self.monitor.after_step(step, seconds)  # probes excluded from the step's time, as in `safebasin train`
        if not row:
            return
        margin = self.cfg.monitor_stop
        if margin and row["probe_harmful_kept"] > self.monitor.start["probe_harmful_kept"] + margin:
            self.stopped_at = step
            control.should_training_stop = True
            log.warning("monitor: the kept model's probe harmful rate reached %.0f%% at step %d (start %.0f%% + margin "
                        "%.0f%%); training stops", 100 * row["probe_harmful_kept"], step,
                        100 * self.monitor.start["probe_harmful_kept"], 100 * margin)
        due = control.should_log  # logging resets it; the Trainer's own loss log of this step must still happen
        self.log(row | ({"monitor_stopped": 1} if self.stopped_at == step else {}))
        control.should_log = due
        return control

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            atomic.write_json(checkpoint_dir(args, state) / MONITOR_FILE, self.monitor.state_dict())

    def log(self, row: dict) -> None:
        self.trainer.log({k: v for k, v in row.items() if k != "probe"})  # numbers only: trackers plot scalars

