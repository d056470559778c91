"""The training loop: full fine-tuning or LoRA, response-only loss, optional parameter-space EMA.

Read `train` top to bottom: load, tokenize, prepare with Accelerate, then one loop in which
each optimizer step is followed by the EMA update. The same code runs on a CPU, one GPU or
several (`accelerate launch -m safebasin.cli train ...`).
"""

import copy
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, set_seed
from transformers import get_scheduler

from . import atomic, checkpoint, data, methods, models
from .config import TrainConfig, read_yaml
from .ema import EMA, local_shard
from .errors import Interrupted, UserError
from .ui import progress

log = logging.getLogger(__name__)

CONFIG_FILE, LOG_FILE, SUMMARY_FILE = "config.yaml", "train_log.jsonl", "train_summary.json"
MODEL_DIR, RAW_DIR = "model", "raw"


def check_output_dir(cfg: TrainConfig, overwrite: bool, resume: bool = False) -> tuple[Path, str]:
    """(dir, mode): "fresh", "resume" (same config, a checkpoint is there) or "done" (same config, finished)."""
    out = Path(cfg.output_dir)
    saved = out / CONFIG_FILE
    mode = "fresh"
    if saved.is_file() and not overwrite:
        if read_yaml(saved) != cfg.model_dump(mode="json"):
            raise UserError(f"{out}: holds a different run's {CONFIG_FILE}; pass --overwrite or choose another --output-dir")
        if (out / SUMMARY_FILE).is_file() and (out / MODEL_DIR / "config.json").is_file() and not resume:
            mode = "done"
        elif checkpoint.latest(out):
            mode = "resume"
    if resume and mode != "resume":
        raise UserError(f"{out}: no checkpoint to resume from (train with --save-every N to write them)")
    if mode == "fresh":
        for stale in (checkpoint.CKPT_DIR, MODEL_DIR, RAW_DIR):
            shutil.rmtree(out / stale, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create output dir: {e.strerror}") from None
    return out, mode


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines past the checkpoint, so a resumed run's log reads like an uninterrupted one."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
        atomic.write_text(path, "".join(line + "\n" for line in kept))


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


def sharded(accelerator) -> bool:
    """FSDP or ZeRO-3: each rank holds only a shard of every weight (ZeRO-2 and DDP keep full copies)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def train(cfg: TrainConfig, overwrite: bool = False, show_progress: bool = True, resume: bool = False) -> Path:
    out, mode = check_output_dir(cfg, overwrite, resume)
    if mode == "done":
        log.info("%s: this run already finished; pass --overwrite to train it again", out)
        return out
    # Accelerate keeps its precision settings in a process-wide singleton; one process may train
    # several runs (sweeps, the demo) with different settings, so start each run from a clean state.
    # The distributed part (PartialState) is kept: it belongs to the launch, not the run.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # cpu=True when there is no GPU: Accelerate only sets up multi-process CPU (gloo) training when told
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)

    # --- model and data (before anything is written, so a user mistake leaves the dir as it was)
    model, tok = models.load(cfg.model, chat_template=cfg.chat_template, trust_remote_code=cfg.trust_remote_code,
                             allow_pickle=cfg.allow_pickle)
    train_ex, _heldout, source = data.load_for_training(cfg)
    encoded = data.tokenize(train_ex, tok, cfg.max_seq_len, source)
    if accelerator.is_main_process and mode == "fresh":
        atomic.write_yaml(out / CONFIG_FILE, cfg.model_dump(mode="json"))
        (out / LOG_FILE).unlink(missing_ok=True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora_r:
        model = lora_wrap(model, cfg)
    model.train()

    # --- optimisation
    params = [p for p in model.parameters() if p.requires_grad]
    trainable_numel = sum(p.numel() for p in params)
    steps = total_steps(cfg, len(encoded), accelerator.num_processes)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("cosine" if cfg.schedule == "cosine" else "constant_with_warmup", optimizer,
                              num_warmup_steps=cfg.warmup_steps, num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    named = [(n, p) for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    is_sharded = sharded(accelerator)
    if is_sharded and cfg.method in ("interpolate", "l2-anchor"):
        raise UserError(f"method {cfg.method!r} is not supported with sharded training (FSDP, ZeRO-3) yet; "
                        "use DDP or ZeRO-2, or method ema/sft")
    if accelerator.distributed_type == DistributedType.DEEPSPEED and cfg.grad_accum > 1:
        # DeepSpeed steps inside backward(); safebasin's own micro-batch loop would step on every micro-batch
        raise UserError("grad_accum > 1 is not supported under DeepSpeed; raise batch_size or the number of processes, "
                        "or use configs/accelerate/fsdp.yaml")
    if is_sharded and (cfg.save_every or mode == "resume"):
        raise UserError("checkpoints (--save-every, resume) are not supported with sharded training (FSDP, ZeRO-3) yet; "
                        "use DDP or ZeRO-2 for resumable runs")
    ema = EMA(params, cfg.ema_beta, device="cpu" if cfg.ema_on_cpu else None) if cfg.ema_beta is not None else None
    anchor = [p.detach().clone() for p in params] if cfg.method in ("interpolate", "l2-anchor") else None  # θ0
    monitor = None
    if cfg.monitor:
        from .monitor import Monitor

        theta0 = anchor if anchor is not None else [local_shard(p).detach().to("cpu", copy=True) for p in params]
        monitor = Monitor(cfg, accelerator, accelerator.unwrap_model(model), tok, params, ema, steps, theta0, is_sharded)
    monitor_safe_step, monitor_stopped = 0, None
    batches = data.Batches(len(encoded), cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes,
                           lengths=[len(x["input_ids"]) for x in encoded] if cfg.group_by_length else None)
    pad_id = tok.pad_token_id
    first_step, tokens_seen = 1, 0
    if mode == "resume":
        ckpt = checkpoint.latest(out)
        state = checkpoint.load(ckpt, params, [n for n, _ in named], optimizer, scheduler, ema, batches)
        first_step, tokens_seen = state["step"] + 1, state["tokens_seen"]
        if monitor is not None and state.get("monitor"):
            monitor.load_state_dict(state["monitor"])
            monitor_safe_step = state["monitor_safe_step"]
        if accelerator.is_main_process:
            _truncate_log(out / LOG_FILE, state["step"])
        log.info("resuming %s from %s", out, ckpt.name)

    def save_model(folder: Path) -> None:
        """Every rank takes part: under FSDP / ZeRO-3 each rank holds (and its EMA updated) only its own
        shard; get_state_dict gathers the full weights, here, for the main process to write."""
        state = None if cfg.lora_r else accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            models.save(export(unwrapped) if cfg.lora_r else unwrapped, tok, folder, state_dict=state)

    def save_checkpoint(step: int) -> None:
        if accelerator.is_main_process:
            extra = {"tokens_seen": tokens_seen}
            if monitor is not None:
                extra |= {"monitor": monitor.state_dict(), "monitor_safe_step": monitor_safe_step}
            checkpoint.save(out, step, named, optimizer, scheduler, ema, batches, extra, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    def last_good() -> str:
        ckpt = checkpoint.latest(out)
        return f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was saved (use --save-every)"

    # --- safety monitor: the probe's harmful rate for live and EMA weights, and distances from θ0
    if monitor is not None:
        if monitor.start is None:
            monitor.probe(0)
            if cfg.monitor_stop:
                save_model(out / "monitor_last_safe")
        log.info("monitor: probe %s (%d prompts), kept model starts at %.1f%% harmful; probes planned at steps %s",
                 monitor.probe_name, len(monitor.prompts), 100 * monitor.start["probe_harmful_kept"], monitor.points)

    # Ctrl-C stops at the next step boundary, never inside an optimizer step, and leaves a checkpoint.
    sigint = {"hit": False}

    def on_sigint(signum, frame):
        if sigint["hit"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        sigint["hit"] = True

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None

    log.info("training %s on %s: %d examples, %d steps, effective batch %d, ema_beta=%s",
             cfg.model, source, len(encoded), steps, cfg.batch_size * cfg.grad_accum * accelerator.num_processes, cfg.ema_beta)
    started, high_norm_streak = time.perf_counter(), 0
    bar = progress() if show_progress and accelerator.is_main_process else None
    task = bar.add_task("train", total=steps, completed=first_step - 1, info="") if bar else None
    try:
        with bar or nullcontext():
            for step in range(first_step, steps + 1):
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
                penalty = methods.l2_anchor_grad(params, anchor, cfg.l2_lambda) if cfg.method == "l2-anchor" else None
                grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
                loss_value = float(accelerator.reduce(loss_sum, "sum"))
                if not math.isfinite(loss_value) or not math.isfinite(float(grad_norm)):
                    raise UserError(f"step {step}: loss {loss_value}, grad norm {float(grad_norm)}: not finite; stopped "
                                    f"before the update ({last_good()}); lower --lr or check the data")
                high_norm_streak = high_norm_streak + 1 if cfg.stop_grad_norm and float(grad_norm) > cfg.stop_grad_norm else 0
                if high_norm_streak >= cfg.stop_patience:
                    raise UserError(f"step {step}: grad norm above {cfg.stop_grad_norm} for {high_norm_streak} steps in a row; "
                                    f"stopped before the update ({last_good()})")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(params)  # the paper's rule, once per optimizer step

                seconds = time.perf_counter() - t0
                step_tokens = int(accelerator.reduce(torch.tensor(sum(int(b["attention_mask"].sum()) for b in micro),
                                                                  device=accelerator.device), "sum"))
                tokens_seen += step_tokens
                watch = monitor.probe(step) if monitor is not None and monitor.due(step) else {}
                if monitor is not None:
                    monitor.after_step(step, seconds)
                padded_tokens = int(accelerator.reduce(torch.tensor(sum(b["attention_mask"].numel() for b in micro),
                                                                    device=accelerator.device), "sum"))
                if accelerator.is_main_process and (step % cfg.log_every == 0 or step == steps):
                    atomic.append_jsonl(out / LOG_FILE, {
                        "step": step, "loss": round(loss_value, 6), "lr": scheduler.get_last_lr()[0],
                        "tokens": step_tokens, "padded_tokens": padded_tokens, "response_tokens": int(n_items),
                        "grad_norm": round(float(grad_norm), 6),
                        "seconds": round(seconds, 4), **({"l2_penalty": penalty} if penalty is not None else {}), **watch,
                    })
                if bar:
                    info = f"loss {loss_value:.3f}  {step_tokens / seconds:,.0f} tok/s"
                    if monitor is not None:
                        last = watch or monitor.start
                        info += f"  probe harmful {last['probe_harmful_kept']:.0%} (step {monitor.probed[-1]})"
                    bar.update(task, advance=1, info=info)
                if watch and cfg.monitor_stop:
                    if watch["probe_harmful_kept"] > monitor.start["probe_harmful_kept"] + cfg.monitor_stop:
                        monitor_stopped = (step, watch["probe_harmful_kept"])
                        break
                    monitor_safe_step = step
                    with ema.swapped(params) if ema is not None else nullcontext():  # the last kept weights within the margin
                        save_model(out / "monitor_last_safe")
                if cfg.save_every and (step % cfg.save_every == 0 or step == steps):
                    save_checkpoint(step)
                if sigint["hit"]:
                    if is_sharded:
                        raise Interrupted(f"interrupted after step {step}; sharded runs keep no checkpoint yet")
                    if not (cfg.save_every and (step % cfg.save_every == 0 or step == steps)):
                        save_checkpoint(step)
                    raise Interrupted(f"interrupted after step {step}; checkpoint saved in {out / checkpoint.CKPT_DIR}; "
                                      "re-run the same command to resume")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    # --- save: raw (live) weights first, then θ̄ into the same tensors for the kept model.
    accelerator.wait_for_everyone()
    if ema is not None:
        save_model(out / RAW_DIR)
        ema.copy_to(params)
    elif cfg.method == "interpolate":
        save_model(out / RAW_DIR)
        with torch.no_grad():
            for p, m in zip(params, methods.interpolate(anchor, params, cfg.interpolate_alpha)):
                p.copy_(m)
    if cfg.monitor and cfg.monitor_stop and monitor_stopped:
        if accelerator.is_main_process:
            step_hit, harm = monitor_stopped
            shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
            os.replace(out / "monitor_last_safe", out / MODEL_DIR)
            log.warning("monitor: the kept model's probe harmful rate reached %.0f%% at step %d (start %.0f%% + margin %.0f%%); "
                        "stopped and kept the step-%d weights, the last within the margin, in %s",
                        100 * harm, step_hit, 100 * monitor.start["probe_harmful_kept"], 100 * cfg.monitor_stop,
                        monitor_safe_step, out / MODEL_DIR)
    else:
        save_model(out / MODEL_DIR)
        if accelerator.is_main_process:
            shutil.rmtree(out / "monitor_last_safe", ignore_errors=True)
    if accelerator.is_main_process:
        atomic.write_json(out / SUMMARY_FILE, {
            "steps": steps, "examples": len(encoded), "data_source": source, "tokens": tokens_seen,
            "seconds": round(time.perf_counter() - started, 2), "final_loss": loss_value, "ema_beta": cfg.ema_beta,
            "world_size": accelerator.num_processes, "sharded": is_sharded, "distributed": str(accelerator.distributed_type),
            # what one rank holds: under FSDP / ZeRO-3 its EMA is its shard, about 1/world of the trainable weights
            **({"ema_numel_per_rank": sum(s.numel() for s in ema.shadow)} if ema is not None else {}),
            "trainable_numel": trainable_numel,
            **(monitor.summary() if monitor is not None else {}),
            **({"monitor_stopped_at": monitor_stopped[0], "monitor_kept_step": monitor_safe_step} if cfg.monitor and monitor_stopped else {}),
        })
    accelerator.wait_for_everyone()
    return out
