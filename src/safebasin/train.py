"""The training loop: one loop for every method, with the parameter-space EMA as its own step.

Read `train` top to bottom: load and build (nothing in the output dir changes before this has
worked), prepare with Accelerate, then one loop in which each optimizer step is followed by the
EMA update. What a method changes (model, data, loss, end weights) is behind `safebasin.methods`;
checkpoints, the monitor, logging (and the experiment trackers of --report-to) and Ctrl-C are behind
`Run`, below. The same code runs on a CPU, one GPU or several (`accelerate launch -m safebasin.cli train ...`).
"""

import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, set_seed
from pydantic import ValidationError
from transformers import get_scheduler

from . import atomic, checkpoint, data, methods, model_card, models
from .config import TrainConfig, build, read_yaml, upgrade_legacy_keys
from .ema import EMA, local_shard
from .errors import Interrupted, UserError
from .ui import progress
from .trackers import TRACKERS_DIR, TrackerRun, distance, make_trackers, tracker_config, tracker_values

log = logging.getLogger(__name__)

CONFIG_FILE, LOG_FILE, SUMMARY_FILE = "config.yaml", "train_log.jsonl", "train_summary.json"
START_FILE = models.START_FILE  # what cfg.model led to when the run started (models.pin): found from any directory
MODEL_DIR, RAW_DIR, LAST_SAFE_DIR = "model", "raw", "monitor_last_safe"
MARKER = ".safebasin-run"  # written into every run dir: safebasin deletes only inside dirs that carry it
OUTPUTS = (checkpoint.CKPT_DIR, MODEL_DIR, RAW_DIR, LAST_SAFE_DIR, LOG_FILE, SUMMARY_FILE, TRACKERS_DIR)


def train(cfg: TrainConfig, overwrite: bool = False, show_progress: bool = True, resume: bool = False,
          tracker: "TrackerRun | None" = None) -> Path:
    """`tracker`: where and as what the run reports to cfg.report_to (default: <output_dir>/trackers, by its dir name)."""
    out, mode = plan_output_dir(cfg, overwrite, resume)
    if mode == "done":
        remove_stale_temps(out)
        log.info("%s: this run already finished; pass --overwrite to train it again", out)
        return out
    trackers = make_trackers(cfg.report_to, tracker or TrackerRun(out / TRACKERS_DIR, out.resolve().name),
                             resume=mode == "resume")
    accelerator = fresh_accelerator(cfg, trackers)
    set_seed(cfg.seed)
    method = methods.get(cfg.method)(cfg)

    # --- model and data: every user mistake surfaces here, before anything in the output dir changes
    model, tok = models.load(cfg.model, chat_template=cfg.chat_template, trust_remote_code=cfg.trust_remote_code,
                             allow_pickle=cfg.allow_pickle)
    rows, _heldout, source = data.load_for_training(cfg)
    encoded = method.encode(method.prepare_rows(rows), tok, source)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = method.build(model)
    is_sharded = check_launch(cfg, accelerator, method, mode)
    if accelerator.is_main_process:
        start_run_dir(out, cfg, mode)
    model.train()

    # --- optimisation
    steps = total_steps(cfg, len(encoded), accelerator.num_processes)
    optimizer = torch.optim.AdamW(method.param_groups(method.trainable(model)), lr=cfg.lr,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("cosine" if cfg.schedule == "cosine" else "constant_with_warmup", optimizer,
                              num_warmup_steps=cfg.warmup_steps, num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    named = method.trainable(accelerator.unwrap_model(model))
    params = [p for _, p in named]
    method.start(params)  # θ0
    ema = EMA(params, cfg.ema_beta, device="cpu" if cfg.ema_on_cpu else None) if cfg.ema_beta is not None else None
    batches = data.Batches(len(encoded), cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes,
                           lengths=[len(x["input_ids"]) for x in encoded] if cfg.group_by_length else None)
    run = Run(cfg, out, accelerator, model, tok, method, named, optimizer, scheduler, ema, batches, steps, is_sharded)
    if mode == "resume":
        run.resume()
    run.start_monitor()

    log.info("training %s (%s) on %s: %d examples, %d steps, effective batch %d, ema_beta=%s", cfg.model, cfg.method,
             source, len(encoded), steps, cfg.batch_size * cfg.grad_accum * accelerator.num_processes, cfg.ema_beta)
    with run.tracking(), stop_at_step_boundary_on_ctrl_c() as ctrl_c, run.progress_bar(show_progress):
        for step in range(run.first_step, steps + 1):
            t0 = time.perf_counter()
            micro = [method.collate([encoded[i] for i in batches.next()], tok.pad_token_id) for _ in range(cfg.grad_accum)]
            loss, terms, n_items = forward_backward(accelerator, model, method, micro)
            terms |= method.after_backward(params)
            grad_norm = float(accelerator.clip_grad_norm_(params, cfg.grad_clip or float("inf")))
            run.stop_if_unstable(step, loss, grad_norm)  # NaN / exploding gradients: stop before the update
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(params)  # the paper's rule, once per optimizer step, whatever the method
            watch = run.after_step(step, loss, grad_norm, micro, n_items, time.perf_counter() - t0, terms)
            if run.monitor_says_stop(step, watch):
                break
            run.checkpoint_if_due(step, interrupted=ctrl_c.is_set())
    run.save_outputs()
    return out


def forward_backward(accelerator, model, method, micro: list[dict]) -> tuple[float, dict, torch.Tensor]:
    """Accumulate the gradients of one optimizer step; returns (loss, logged terms, response tokens).
    The loss is normalised by the response tokens of the whole accumulated (global) batch, not per micro-batch."""
    n_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    n_items = accelerator.reduce(torch.tensor(n_items, device=accelerator.device), "sum")
    loss_sum = torch.zeros((), device=accelerator.device)
    terms: dict = {}
    for i, batch in enumerate(micro):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        sync = i == len(micro) - 1
        with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
            loss, extra = method.loss(model, batch, n_items)
        accelerator.backward(loss * accelerator.num_processes)  # DDP averages gradients over ranks
        loss_sum += loss.detach()
        for k, v in extra.items():
            terms[k] = terms.get(k, 0.0) + float(v)
    return float(accelerator.reduce(loss_sum, "sum")), terms, n_items


class Run:
    """Everything around the loop that is not the optimisation itself: resume, logging, the safety
    monitor, checkpoints and the final save."""

    def __init__(self, cfg, out, accelerator, model, tok, method, named, optimizer, scheduler, ema, batches, steps, is_sharded):
        self.cfg, self.out, self.accelerator, self.model, self.tok, self.method = cfg, out, accelerator, model, tok, method
        self.named, self.params = named, [p for _, p in named]
        self.optimizer, self.scheduler, self.ema, self.batches = optimizer, scheduler, ema, batches
        self.steps, self.is_sharded = steps, is_sharded
        self.first_step, self.tokens_seen, self.loss = 1, 0, None
        self.high_norm_streak, self.started = 0, time.perf_counter()
        self.monitor, self.monitor_safe_step, self.monitor_stopped = None, 0, None
        self.bar = self.task = None
        self.tracked = bool(accelerator.log_with)  # --report-to: the log lines also go to the experiment trackers
        # θ0 (before a resume loads its checkpoint), for the distances the monitor and the trackers log
        self.theta0 = [local_shard(p).detach().to("cpu", copy=True) for p in self.params] if cfg.monitor or self.tracked else None
        if cfg.monitor:
            from .monitor import Monitor

            self.monitor = Monitor(cfg, accelerator, accelerator.unwrap_model(model), tok, self.params, ema, steps,
                                   self.theta0, is_sharded)

    # --- start
    def resume(self) -> None:
        ckpt = checkpoint.latest(self.out)
        state = checkpoint.load(ckpt, self.params, [n for n, _ in self.named], self.optimizer, self.scheduler, self.ema,
                                self.batches)
        self.first_step, self.tokens_seen, self.loss = state["step"] + 1, state["tokens_seen"], state.get("loss")
        if self.monitor is not None and state.get("monitor"):
            self.monitor.load_state_dict(state["monitor"])
            self.monitor_safe_step = state["monitor_safe_step"]
        if self.accelerator.is_main_process:
            truncate_log(self.out / LOG_FILE, state["step"])
        log.info("resuming %s from %s", self.out, ckpt.name)

    def start_monitor(self) -> None:
        """The safety monitor: the probe's harmful rate for live and EMA weights, and distances from θ0."""
        if self.monitor is None:
            return
        if self.monitor.start is None:
            self.monitor.probe(0)
            if self.cfg.monitor_stop:
                self.save_model(self.out / LAST_SAFE_DIR)
        log.info("monitor: probe %s (%d prompts), kept model starts at %.1f%% harmful; probes planned at steps %s",
                 self.monitor.probe_name, len(self.monitor.prompts), 100 * self.monitor.start["probe_harmful_kept"],
                 self.monitor.points)

    @contextmanager
    def tracking(self):
        """The experiment trackers (--report-to) around the loop: started with the run's config, closed however it ends."""
        if not self.tracked:
            yield
            return
        self.accelerator.init_trackers("safebasin", config=tracker_config(self.cfg))
        if self.monitor is not None and self.first_step == 1:  # the start's probe, made before the trackers opened
            self.accelerator.log(tracker_values({}, self.monitor.start, self.distances(self.monitor.start)), step=0)
        try:
            yield
        finally:  # Accelerator.end_training() minus its destroy_process_group(): the launch's process group
            for t in self.accelerator.trackers:  # outlives one run (a sweep or the demo trains several in a process)
                t.finish()

    @contextmanager
    def progress_bar(self, show: bool):
        self.bar = progress() if show and self.accelerator.is_main_process else None
        self.task = self.bar.add_task("train", total=self.steps, completed=self.first_step - 1, info="") if self.bar else None
        with self.bar or nullcontext():
            yield

    # --- every step
    def stop_if_unstable(self, step: int, loss: float, grad_norm: float) -> None:
        cfg = self.cfg
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            raise UserError(f"step {step}: loss {loss}, grad norm {grad_norm}: not finite; stopped before the update "
                            f"({self.last_good()}); lower --lr or check the data")
        self.high_norm_streak = self.high_norm_streak + 1 if cfg.stop_grad_norm and grad_norm > cfg.stop_grad_norm else 0
        if self.high_norm_streak >= cfg.stop_patience:
            raise UserError(f"step {step}: grad norm above {cfg.stop_grad_norm} for {self.high_norm_streak} steps in a row; "
                            f"stopped before the update ({self.last_good()})")

    def after_step(self, step: int, loss: float, grad_norm: float, micro: list[dict], n_items, seconds: float,
                   terms: dict) -> dict:
        """Count tokens, probe when the monitor is due, write the log line and move the bar; returns the probe row."""
        acc, self.loss = self.accelerator, loss
        step_tokens = int(acc.reduce(torch.tensor(sum(int(b["attention_mask"].sum()) for b in micro), device=acc.device), "sum"))
        self.tokens_seen += step_tokens
        watch = self.monitor.probe(step) if self.monitor is not None and self.monitor.due(step) else {}
        if self.monitor is not None:
            self.monitor.after_step(step, seconds)
        padded = int(acc.reduce(torch.tensor(sum(b["attention_mask"].numel() for b in micro), device=acc.device), "sum"))
        if step % self.cfg.log_every == 0 or step == self.steps:
            row = {"step": step, "loss": round(loss, 6), "lr": self.scheduler.get_last_lr()[0], "tokens": step_tokens,
                   "padded_tokens": padded, "response_tokens": int(n_items), "grad_norm": round(grad_norm, 6),
                   "seconds": round(seconds, 4), **{k: round(v, 6) for k, v in terms.items()}}
            if acc.is_main_process:
                atomic.append_jsonl(self.out / LOG_FILE, row | watch)
            if self.tracked:  # the same line, with tokens/s and the distances from θ0 (measured on every rank)
                acc.log(tracker_values(row, watch, self.distances(watch)), step=step)
        if self.bar:
            info = f"loss {loss:.3f}  {step_tokens / seconds:,.0f} tok/s"
            if self.monitor is not None:
                last = watch or self.monitor.start
                info += f"  probe harmful {last['probe_harmful_kept']:.0%} (step {self.monitor.probed[-1]})"
            self.bar.update(self.task, advance=1, info=info)
        return watch

    def distances(self, watch: dict) -> dict:
        """‖θ−θ0‖ and ‖θ̄−θ0‖ over the trainable weights: the probe's own when it measured them at this step."""
        if "dist_live" in watch:
            return {k: watch[k] for k in ("dist_live", "dist_ema") if k in watch}
        out = {"dist_live": distance(self.params, self.theta0, self.accelerator, self.is_sharded)}
        if self.ema is not None:
            out["dist_ema"] = distance(self.ema.shadow, self.theta0, self.accelerator, self.is_sharded)
        return out

    def monitor_says_stop(self, step: int, watch: dict) -> bool:
        """With monitor_stop: True once the kept model's probe rate leaves the margin; else keep its weights as the last safe."""
        if not (watch and self.cfg.monitor_stop):
            return False
        if watch["probe_harmful_kept"] > self.monitor.start["probe_harmful_kept"] + self.cfg.monitor_stop:
            self.monitor_stopped = (step, watch["probe_harmful_kept"])
            return True
        self.monitor_safe_step = step
        with self.ema.swapped(self.params) if self.ema is not None else nullcontext():
            self.save_model(self.out / LAST_SAFE_DIR)
        return False

    def checkpoint_if_due(self, step: int, interrupted: bool) -> None:
        """Every save_every steps and at the end; on Ctrl-C, save and stop here, at a step boundary."""
        due = bool(self.cfg.save_every) and (step % self.cfg.save_every == 0 or step == self.steps)
        if due or (interrupted and not self.is_sharded):
            self.save_checkpoint(step)
        if interrupted:
            if self.is_sharded:
                raise Interrupted(f"interrupted after step {step}; sharded runs keep no checkpoint yet")
            raise Interrupted(f"interrupted after step {step}; checkpoint saved in {self.out / checkpoint.CKPT_DIR}; "
                              "re-run the same command to resume")

    # --- saving
    def save_model(self, folder: Path) -> None:
        """Every rank takes part: under FSDP / ZeRO-3 each rank holds (and its EMA updated) only its own
        shard; get_state_dict gathers the full weights, here, for the main process to write."""
        acc = self.accelerator
        state = None if self.cfg.lora_r else acc.get_state_dict(self.model)
        if acc.is_main_process:
            self.method.save(acc.unwrap_model(self.model), self.tok, folder, state_dict=state)

    def save_checkpoint(self, step: int) -> None:
        if self.accelerator.is_main_process:
            extra = {"tokens_seen": self.tokens_seen, "loss": self.loss}
            if self.monitor is not None:
                extra |= {"monitor": self.monitor.state_dict(), "monitor_safe_step": self.monitor_safe_step}
            checkpoint.save(self.out, step, self.named, self.optimizer, self.scheduler, self.ema, self.batches, extra,
                            self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def last_good(self) -> str:
        ckpt = checkpoint.latest(self.out)
        return f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was saved (use --save-every)"

    def check_finite(self) -> None:
        """A model of NaNs is never saved: the last update (no loss after it to catch it) or θ̄ may have overflowed."""
        tensors = [("weights", p) for p in self.params] + [("EMA weights", s) for s in (self.ema.shadow if self.ema else [])]
        bad = next((what for what, t in tensors if not bool(torch.isfinite(local_shard(t).detach()).all())), None)
        if bad is not None:
            raise UserError(f"step {self.steps}: {bad} not finite after the update; not saved ({self.last_good()}); "
                            "lower --lr or check the data")

    def save_outputs(self) -> None:
        """raw/ (the live weights) first when the kept model differs from them, then model/, then the summary."""
        acc, out, cfg = self.accelerator, self.out, self.cfg
        acc.wait_for_everyone()
        self.check_finite()
        if self.ema is not None or self.method.changes_final_weights:
            self.save_model(out / RAW_DIR)
        if self.ema is not None:
            self.ema.copy_to(self.params)
        self.method.finalize(self.params)
        if cfg.monitor and cfg.monitor_stop and self.monitor_stopped:
            if acc.is_main_process:
                step_hit, harm = self.monitor_stopped
                shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
                os.replace(out / LAST_SAFE_DIR, out / MODEL_DIR)
                log.warning("monitor: the kept model's probe harmful rate reached %.0f%% at step %d (start %.0f%% + margin "
                            "%.0f%%); stopped and kept the step-%d weights, the last within the margin, in %s",
                            100 * harm, step_hit, 100 * self.monitor.start["probe_harmful_kept"], 100 * cfg.monitor_stop,
                            self.monitor_safe_step, out / MODEL_DIR)
        else:
            self.save_model(out / MODEL_DIR)
            if acc.is_main_process:
                shutil.rmtree(out / LAST_SAFE_DIR, ignore_errors=True)
        if acc.is_main_process:
            atomic.write_json(out / SUMMARY_FILE, self.summary())
            model_card.write(out)  # model/README.md: the recipe and these figures, from config.yaml and the summary
        acc.wait_for_everyone()

    def summary(self) -> dict:
        acc, monitor = self.accelerator, self.monitor
        return {
            "steps": self.steps, "examples": self.batches.n, "method": self.cfg.method, "tokens": self.tokens_seen,
            "seconds": round(time.perf_counter() - self.started, 2), "final_loss": self.loss, "ema_beta": self.cfg.ema_beta,
            "world_size": acc.num_processes, "sharded": self.is_sharded, "distributed": str(acc.distributed_type),
            # what one rank holds: under FSDP / ZeRO-3 its EMA is its shard, about 1/world of the trainable weights
            **({"ema_numel_per_rank": sum(s.numel() for s in self.ema.shadow)} if self.ema is not None else {}),
            "trainable_numel": sum(p.numel() for p in self.params),
            **(monitor.summary() if monitor is not None else {}),
            **({"monitor_stopped_at": self.monitor_stopped[0], "monitor_kept_step": self.monitor_safe_step}
               if self.monitor_stopped else {}),
        }


# ---------------------------------------------------------------- the output dir

def plan_output_dir(cfg: TrainConfig, overwrite: bool, resume: bool = False) -> tuple[Path, str]:
    """(dir, mode): "fresh", "resume" (same config, a checkpoint is there) or "done" (same config, finished).
    Reads only: nothing is deleted or written here but a probe that the dir is writable."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --output-dir exists and is not a directory")
    refuse_inputs_inside(out, cfg)
    saved, mode = out / CONFIG_FILE, "fresh"
    if saved.is_file() and not overwrite:
        if not same_config(saved, cfg):
            raise UserError(f"{out}: holds a different run's {CONFIG_FILE}; pass --overwrite or choose another --output-dir")
        if (out / SUMMARY_FILE).is_file() and methods.is_model_folder(out / MODEL_DIR) and not resume:
            mode = "done"
        elif checkpoint.latest(out):
            mode = "resume"
    if resume and mode != "resume":
        raise UserError(f"{out}: no checkpoint to resume from (train with --save-every N to write them)")
    if mode == "fresh" and not is_run_dir(out):
        foreign = [name for name in OUTPUTS if (out / name).exists()]
        if foreign:
            raise UserError(f"{out}: holds {', '.join(foreign)} that safebasin did not write (no {MARKER}); "
                            "choose another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"{out}: cannot write to the output dir: {e.strerror}") from None
    return out, mode


def same_config(saved: Path, cfg: TrainConfig) -> bool:
    """Whether a run dir's config.yaml is this config (where trackers report to is not part of a run's identity)."""
    try:
        other = TrainConfig(**upgrade_legacy_keys(read_yaml(saved), warn=False))
    except (ValidationError, TypeError):  # a config.yaml no version of safebasin would write: not this run
        return False
    return other.identity(exclude=frozenset({"report_to"})) == cfg.identity(exclude=frozenset({"report_to"}))


def train_arm(cfg: TrainConfig, show_progress: bool = True) -> Path:
    """A demo arm: a finished run of this very config in its dir is kept, so an interrupted demo picks up at the
    arm it stopped in (training is deterministic on a CPU, so retraining would give the same weights); a run of
    any other config there is replaced."""
    saved = Path(cfg.output_dir) / CONFIG_FILE
    return train(cfg, overwrite=not (saved.is_file() and same_config(saved, cfg)), show_progress=show_progress)


def is_run_dir(out: Path) -> bool:
    """A dir safebasin made: its marker, or (runs from before the marker) a config.yaml that is a train config."""
    if (out / MARKER).is_file():
        return True
    if not (out / CONFIG_FILE).is_file():
        return False
    try:
        build(TrainConfig, read_yaml(out / CONFIG_FILE))
        return True
    except UserError:
        return False


def refuse_inputs_inside(out: Path, cfg: TrainConfig) -> None:
    """The output dir must not hold the input model, data or template: a fresh run replaces what is in it."""
    target = out.resolve()
    for what, spec in (("model", cfg.model), ("data", cfg.data), ("chat template", cfg.chat_template)):
        if not spec or not os.path.exists(spec):
            continue
        path = Path(spec).resolve()
        if path == target or target in path.parents:
            raise UserError(f"--output-dir {out} contains the input {what} {spec}; choose another --output-dir")


def remove_stale_temps(out: Path) -> list[Path]:
    """The temp files and folders that atomic writes leave beside an output when the process is killed mid-save
    (`.model.XXXX.tmp`, `.model.XXXX.old`, `.config.yaml.XXXX.tmp`): only under names safebasin writes, and only
    in a dir it marked as a run dir."""
    if not (out / MARKER).is_file():
        return []
    names = (*OUTPUTS, CONFIG_FILE, START_FILE, MARKER, "README.md")
    stale = [p for p in out.iterdir() if p.name.startswith(tuple(f".{n}." for n in names))
             and p.name.endswith((".tmp", ".old"))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


def start_run_dir(out: Path, cfg: TrainConfig, mode: str) -> None:
    """Called once the model and data have loaded: a fresh run removes the stale outputs (its own only;
    the summary first, so a half-replaced dir never claims to be finished), then writes its config."""
    try:
        remove_stale_temps(out)
        if mode == "fresh":
            (out / SUMMARY_FILE).unlink(missing_ok=True)
            for name in OUTPUTS:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            atomic.write_text(out / MARKER, "a safebasin run dir: `safebasin train` replaces its outputs on --overwrite\n")
            atomic.write_yaml(out / CONFIG_FILE, cfg.model_dump(mode="json"))
        if mode == "fresh" or not (out / START_FILE).is_file():
            atomic.write_json(out / START_FILE, models.pin(cfg.model))
    except OSError as e:
        raise UserError(f"{out}: cannot write the run dir: {e.strerror}") from None


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines past the checkpoint, so a resumed run's log reads like an uninterrupted one."""
    if path.is_file():
        kept = [row for row in atomic.read_jsonl(path) if row["step"] <= last_step]
        atomic.write_jsonl(path, kept)


# ---------------------------------------------------------------- the launch

def fresh_accelerator(cfg: TrainConfig, trackers: list | None = None) -> Accelerator:
    # Accelerate keeps its precision settings in a process-wide singleton; one process may train
    # several runs (sweeps, the demo) with different settings, so start each run from a clean state.
    # The distributed part (PartialState) is kept: it belongs to the launch, not the run.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # cpu=True when there is no GPU: Accelerate only sets up multi-process CPU (gloo) training when told
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(), log_with=trackers or None)


def check_launch(cfg: TrainConfig, accelerator, method, mode: str) -> bool:
    """Settings the launch cannot run, refused before the run dir is touched; returns whether weights are sharded."""
    is_sharded = sharded(accelerator)
    if is_sharded and not method.supports_sharding:
        raise UserError(f"method {cfg.method!r} is not supported with sharded training (FSDP, ZeRO-3) yet; "
                        "use DDP or ZeRO-2, or method ema/sft")
    if accelerator.distributed_type == DistributedType.DEEPSPEED and cfg.grad_accum > 1:
        # DeepSpeed steps inside backward(); safebasin's own micro-batch loop would step on every micro-batch
        raise UserError("grad_accum > 1 is not supported under DeepSpeed; raise batch_size or the number of processes, "
                        "or use configs/accelerate/fsdp.yaml")
    if is_sharded and (cfg.save_every or mode == "resume"):
        raise UserError("checkpoints (--save-every, resume) are not supported with sharded training (FSDP, ZeRO-3) yet; "
                        "use DDP or ZeRO-2 for resumable runs")
    return is_sharded


def sharded(accelerator) -> bool:
    """FSDP or ZeRO-3: each rank holds only a shard of every weight (ZeRO-2 and DDP keep full copies)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def total_steps(cfg: TrainConfig, n_examples: int, world: int) -> int:
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * n_examples / (cfg.batch_size * cfg.grad_accum * world)))


@contextmanager
def stop_at_step_boundary_on_ctrl_c():
    """Ctrl-C sets a flag that the loop reads after each step, so it never stops inside an optimizer step;
    a second Ctrl-C stops at once."""
    hit = threading.Event()

    def on_sigint(signum, frame):
        if hit.is_set():
            raise KeyboardInterrupt
        hit.set()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    try:
        yield hit
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
