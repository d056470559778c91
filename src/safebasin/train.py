"""The training loop: full fine-tuning or LoRA, response-only loss, optional parameter-space EMA.

Read `train` top to bottom: load, tokenize, prepare with Accelerate, then one loop in which
each optimizer step is followed by the EMA update. The same code runs on a CPU, one GPU or
several (`accelerate launch -m safebasin.cli train ...`).
"""

import copy
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from transformers import get_scheduler

from . import atomic, data, models
from .config import TrainConfig, read_yaml
from .ema import EMA
from .errors import UserError
from .ui import progress

log = logging.getLogger(__name__)

CONFIG_FILE, LOG_FILE, SUMMARY_FILE = "config.yaml", "train_log.jsonl", "train_summary.json"
MODEL_DIR, RAW_DIR = "model", "raw"


def check_output_dir(cfg: TrainConfig, overwrite: bool) -> Path:
    out = Path(cfg.output_dir)
    saved = out / CONFIG_FILE
    if saved.is_file() and not overwrite:
        if read_yaml(saved) != cfg.model_dump(mode="json"):
            raise UserError(f"{out}: holds a different run's {CONFIG_FILE}; pass --overwrite or choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create output dir: {e.strerror}") from None
    return out


def lora_wrap(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def export(model):
    """A plain transformers model for save_pretrained: LoRA adapters are merged into a copy."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def total_steps(cfg: TrainConfig, n_examples: int, world: int) -> int:
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * n_examples / (cfg.batch_size * cfg.grad_accum * world)))


def train(cfg: TrainConfig, overwrite: bool = False, show_progress: bool = True) -> Path:
    out = check_output_dir(cfg, overwrite)
    # Accelerate keeps its precision settings in a process-wide singleton; one process may train
    # several runs (sweeps, the demo) with different settings, so start each run from a clean state.
    # The distributed part (PartialState) is kept: it belongs to the launch, not the run.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)

    # --- model and data (before anything is written, so a user mistake leaves the dir as it was)
    model, tok = models.load(cfg.model, chat_template=cfg.chat_template, trust_remote_code=cfg.trust_remote_code)
    train_ex, _heldout, source = data.load_for_training(cfg)
    encoded = data.tokenize(train_ex, tok, cfg.max_seq_len, source)
    if accelerator.is_main_process:
        atomic.write_yaml(out / CONFIG_FILE, cfg.model_dump(mode="json"))
        (out / LOG_FILE).unlink(missing_ok=True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora_r:
        model = lora_wrap(model, cfg)
    model.train()

    # --- optimisation
    params = [p for p in model.parameters() if p.requires_grad]
    steps = total_steps(cfg, len(encoded), accelerator.num_processes)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("cosine" if cfg.schedule == "cosine" else "constant_with_warmup", optimizer,
                              num_warmup_steps=cfg.warmup_steps, num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]
    ema = EMA(params, cfg.ema_beta, device="cpu" if cfg.ema_on_cpu else None) if cfg.ema_beta is not None else None
    batches = data.Batches(len(encoded), cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
    pad_id = tok.pad_token_id

    log.info("training %s on %s: %d examples, %d steps, effective batch %d, ema_beta=%s",
             cfg.model, source, len(encoded), steps, cfg.batch_size * cfg.grad_accum * accelerator.num_processes, cfg.ema_beta)
    started, tokens_seen = time.perf_counter(), 0
    bar = progress() if show_progress and accelerator.is_main_process else None
    task = bar.add_task("train", total=steps, info="") if bar else None
    with bar or nullcontext():
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            micro = [data.collate([encoded[i] for i in batches.next()], pad_id) for _ in range(cfg.grad_accum)]
            # normalise by the response tokens of the whole accumulated (global) batch, not per micro-batch
            n_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
            n_items = accelerator.reduce(torch.tensor(n_items, device=accelerator.device), "sum")
            loss_sum = torch.zeros((), device=accelerator.device)
            for i, batch in enumerate(micro):
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                sync = i == len(micro) - 1
                with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                    loss = model(**batch, num_items_in_batch=n_items).loss
                accelerator.backward(loss * accelerator.num_processes)  # DDP averages gradients over ranks
                loss_sum += loss.detach()
            grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
            loss_value = float(accelerator.reduce(loss_sum, "sum"))
            if not math.isfinite(loss_value):
                raise UserError(f"step {step}: loss is {loss_value}; stopping (lower --lr or check the data)")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(params)  # the paper's rule, once per optimizer step

            seconds = time.perf_counter() - t0
            step_tokens = int(accelerator.reduce(torch.tensor(sum(int(b["attention_mask"].sum()) for b in micro),
                                                              device=accelerator.device), "sum"))
            tokens_seen += step_tokens
            if accelerator.is_main_process and (step % cfg.log_every == 0 or step == steps):
                atomic.append_jsonl(out / LOG_FILE, {
                    "step": step, "loss": round(loss_value, 6), "lr": scheduler.get_last_lr()[0],
                    "tokens": step_tokens, "response_tokens": int(n_items), "grad_norm": round(float(grad_norm), 6),
                    "seconds": round(seconds, 4),
                })
            if bar:
                bar.update(task, advance=1, info=f"loss {loss_value:.3f}  {step_tokens / seconds:,.0f} tok/s")

    # --- save: raw (live) weights first, then θ̄ into the same tensors for the kept model
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            models.save(export(unwrapped), tok, out / RAW_DIR)
            ema.copy_to(params)
        models.save(export(unwrapped), tok, out / MODEL_DIR)
        atomic.write_json(out / SUMMARY_FILE, {
            "steps": steps, "examples": len(encoded), "data_source": source, "tokens": tokens_seen,
            "seconds": round(time.perf_counter() - started, 2), "final_loss": loss_value, "ema_beta": cfg.ema_beta,
        })
    accelerator.wait_for_everyone()
    return out
