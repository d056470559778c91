"""`safebasin sweep`: a grid of training configs, each trained, evaluated and recorded in the store.

Re-running the same command skips finished runs (by config hash) and restarts unfinished ones;
killing a sweep loses no finished result, since each result lands in one SQLite transaction.
Runs execute one after another here; `--backend ray` hands them to an existing Ray cluster.
Each run is claimed in the store first, so two sweeps on one dir split the runs instead of repeating them.
With `report_to` (--report-to), every trial reports to the sweep's shared trackers (<sweep>/trackers), named by
its hash and tagged with its swept settings, its eval metrics beside its training curves.
"""

import difflib
import itertools
import json
import logging
import time
import traceback
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from . import atomic, data, methods
from .config import LEGACY_KEYS, TrainConfig, build, read_yaml
from .errors import Interrupted, UserError
from .registry import Registry
from .store import STORE_FILE, Store, config_hash, eval_metrics

log = logging.getLogger(__name__)
BACKENDS = ("local", "ray")
NOT_IDENTITY = frozenset({"output_dir", "report_to"})  # where a trial writes and reports: not what it is (its hash ignores them)


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    benches: list[str] = ["advbench"]
    limit: int | None = Field(50, ge=1)  # first N prompts of each bench
    sample: int | None = Field(None, ge=1)  # a seeded sample (seed 0) of N prompts of each bench instead: every category
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    utility: bool = True  # held-out loss (the trial's own split) and ROUGE-L
    rouge_limit: int = Field(20, ge=1)
    refusal_list: str = "gcg"
    backend: Literal["auto", "hf", "vllm"] = "auto"  # generation; auto = vLLM when installed and a GPU is present

    def identity(self) -> dict:
        """The settings as a trial's config hash sees them. `sample` joins only when set, so the sweeps run before
        it existed keep their hashes (and their finished trials)."""
        values = self.model_dump(mode="json")
        if values["sample"] is None:
            del values["sample"]
        return values


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: dict = {}  # TrainConfig keys shared by every trial
    grid: dict[str, list] = {}  # key -> values; the trials are the cartesian product
    trials: list[dict] = []  # or an explicit list of settings (crossed with the grid when both are given)
    eval: EvalSettings = EvalSettings()
    baseline: bool = True  # also evaluate the starting model, for the report's "within margin" rule
    keep_weights: bool = True  # false: a trial's weights (model/, raw/, checkpoints) go once it is scored; a big grid fills a disk
    output_dir: str = "runs/sweep"


def parse_grid_flag(flag: str) -> tuple[str, list]:
    """`lr=1e-5,5e-5` -> ("lr", [1e-05, 5e-05]); values are read as YAML scalars."""
    if "=" not in flag:
        raise UserError(f"--grid {flag!r}: expected KEY=V1,V2,...")
    key, values = flag.split("=", 1)
    parsed = [_scalar(v.strip()) for v in values.split(",") if v.strip()]
    if not parsed:
        raise UserError(f"--grid {flag!r}: no values")
    return key.strip(), parsed


def _scalar(text: str):
    """JSON first (so 1e-5 is a number, unlike in YAML 1.1), then YAML (bare words)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return yaml.safe_load(text)


def _accepts_list(annotation) -> bool:
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def apply_set_flag(cfg: SweepConfig, flag: str) -> None:
    """`--set KEY=VALUE` (a base TrainConfig key) or `--set eval.KEY=VALUE`, checked now so the error names the key."""
    if "=" not in flag:
        raise UserError(f"--set {flag!r}: expected KEY=VALUE (a training setting, or eval.KEY for an eval setting)")
    key, text = (x.strip() for x in flag.split("=", 1))
    scope, name = ("eval", key[5:]) if key.startswith("eval.") else ("train", key)
    cls = EvalSettings if scope == "eval" else TrainConfig
    if scope == "train" and name.startswith("method_args.") and name[12:]:  # one setting of the trials' method
        if "method_args" in cfg.grid or any("method_args" in t for t in cfg.trials):
            raise UserError(f"--set {key}: method_args is swept (grid or trials), so a base value would be ignored")
        cfg.base["method_args"] = dict(cfg.base.get("method_args") or {}) | {name[12:]: _scalar(text)}
        return  # the method checks it, in trials(), beside the rest of each trial
    known = set(cls.model_fields) - {"output_dir"}
    if scope == "train":
        known |= set(LEGACY_KEYS)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = ("; the sweep dir is --output-dir" if key == "output_dir" else f"; did you mean {close[0]!r}?" if close
                else f" (known: {', '.join(sorted(known))})" if scope == "eval" else " (see safebasin.config.TrainConfig)")
        raise UserError(f"--set {key}: unknown {'eval' if scope == 'eval' else 'training'} setting {name!r}{hint}")
    ann = cls.model_fields[name].annotation if name in cls.model_fields else float
    if (typing.get_origin(ann) is list or ("," in text and _accepts_list(ann))) and not text.startswith("["):
        value = [_scalar(p.strip()) for p in text.split(",") if p.strip()]  # a list setting, written like --grid: V1,V2
    else:
        value = _scalar(text)
    if scope == "eval":
        cfg.eval = build(EvalSettings, cfg.eval.model_dump() | {name: value}, f"--set {key}")
        return
    if name in cfg.grid or any(name in t for t in cfg.trials):
        raise UserError(f"--set {key}: {key!r} is swept (grid or trials), so a base value would be ignored; use --grid {key}=...")
    build(TrainConfig, {name: value}, f"--set {key}")  # the value alone; trials() checks it against the rest
    cfg.base[name] = value


def load_sweep_config(path: str | None, grid_flags: list[str], base_overrides: dict, output_dir: str | None,
                      set_flags: list[str] = ()) -> SweepConfig:
    values = read_yaml(path) if path else {}
    sweep_block = values.pop("sweep", None)  # `sweep: {grid: ...}` or top-level keys, both accepted
    if isinstance(sweep_block, dict):
        values |= sweep_block
    cfg = build(SweepConfig, values, path or "sweep config")
    for flag in grid_flags:
        key, vals = parse_grid_flag(flag)
        cfg.grid[key] = vals
    cfg.base |= {k: v for k, v in base_overrides.items() if v is not None}
    for flag in set_flags:
        apply_set_flag(cfg, flag)
    if output_dir:
        cfg.output_dir = output_dir
    known = set(TrainConfig.model_fields) - {"output_dir"} | set(LEGACY_KEYS)
    for key in list(cfg.grid) + list(cfg.base) + [k for t in cfg.trials for k in t]:
        if key not in known:
            raise UserError(f"{path or 'sweep'}: unknown config key {key!r} in the grid or base (known: {', '.join(sorted(known))})")
    for key, vals in cfg.grid.items():
        if not isinstance(vals, list) or not vals:
            raise UserError(f"{path or 'sweep'}: grid.{key} must be a non-empty list")
    return cfg


def trials(cfg: SweepConfig) -> list[tuple[str, TrainConfig]]:
    """(hash, TrainConfig) for every grid point; the hash ignores output_dir so it names the run dir."""
    keys = list(cfg.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(cfg.grid[k] for k in keys))]
    if cfg.trials:
        points = [t | p for t in cfg.trials for p in points]
    out = []
    for point in points:
        tc = build(TrainConfig, cfg.base | point | {"output_dir": "."}, f"sweep trial {point}")
        trial = {"train": tc.identity(exclude=NOT_IDENTITY), "eval": cfg.eval.identity()}
        h = config_hash(trial)
        tc.output_dir = str(Path(cfg.output_dir) / "runs" / h)
        out.append((h, tc))
    return out


def run_trial(train_values: dict, eval_values: dict, tracker=None, keep_weights: bool = True,
              show_progress: bool = False) -> tuple[list[tuple], dict]:
    """Train, then evaluate kept (and raw) weights. Top-level and picklable, so Ray can ship it.
    `tracker`: the trial's trackers.TrackerRun in the sweep's trackers (used when report_to is set)."""
    from .evaluate import evaluate
    from .train import train

    tc = TrainConfig(**train_values)
    ev = EvalSettings(**eval_values)
    out = train(tc, show_progress=show_progress, tracker=tracker)  # same dir = same config hash: resumes or skips
    results = evaluate(str(out), ev.benches, out / "eval", utility=ev.utility, limit=ev.limit, sample=ev.sample, max_new_tokens=ev.max_new_tokens,
                       batch_size=ev.batch_size, refusal_list=ev.refusal_list, data_dir=tc.data_dir, rouge_limit=ev.rouge_limit,
                       show_progress=show_progress, backend=ev.backend, report_to=tc.report_to, tracker=tracker)
    summary = json.loads((out / "train_summary.json").read_text())
    train_rows = [("model", "train", "", k, summary[k]) for k in ("steps", "tokens", "examples", "seconds")]
    artifacts = {"run_dir": str(out), "eval": str(out / "eval" / "eval.json")}
    if not keep_weights:
        artifacts["weights_dropped"] = ",".join(drop_weights(out))  # the store keeps artifacts as text
    return eval_metrics(results) + train_rows, artifacts


def drop_weights(run_dir: Path) -> list[str]:
    """Delete a scored trial's weight folders; its config, logs, summary and eval/ (generations included) stay,
    so the store, the report and the method comparison read it as before. Returns the folders deleted."""
    import shutil

    from . import checkpoint
    from .train import LAST_SAFE_DIR, MARKER, MODEL_DIR, RAW_DIR

    if not (run_dir / MARKER).is_file():  # safebasin deletes only inside its own run dirs
        return []
    gone = []
    for name in (MODEL_DIR, RAW_DIR, LAST_SAFE_DIR, checkpoint.CKPT_DIR):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
            gone.append(name)
    return gone


def run_baseline(cfg: SweepConfig, first: TrainConfig, show_progress: bool = False) -> tuple[list[tuple], dict]:
    """The starting model, on the same benches and the same held-out split as the trials."""
    from .evaluate import evaluate

    ev = cfg.eval
    out = Path(cfg.output_dir) / "baseline"
    results = evaluate(first.model, ev.benches, out, utility=ev.utility, limit=ev.limit, sample=ev.sample, max_new_tokens=ev.max_new_tokens,
                       batch_size=ev.batch_size, refusal_list=ev.refusal_list, data_dir=first.data_dir,
                       rouge_limit=ev.rouge_limit, heldout_from=first, show_progress=show_progress, backend=ev.backend,
                       report_to=first.report_to, tracker=trial_tracker(cfg, "baseline", {"safebasin.kind": "baseline"}))
    return eval_metrics(results), {"eval": str(out / "eval.json")}


def check_sweep(cfg: SweepConfig, backend: str) -> list[tuple[str, TrainConfig]]:
    """The trials, once every setting a trial would trip over is checked: a typo must not cost a trained grid."""
    from .evaluate import check_max_new_tokens
    from .judges import REFUSAL_LISTS
    from .models import looks_like_path
    from .plugins import discover

    discover()  # systems register their data sets and benches on import
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--backend ray needs Ray: pip install 'safebasin[ray]'") from None
    out = Path(cfg.output_dir)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"output dir {out}: {existing} is a file, not a directory")

    def named_or_file(value: str, names, key: str, what: str) -> None:
        if value not in names and not Path(value).expanduser().is_file():
            if isinstance(names, Registry):  # the registry's own line, with its did-you-mean
                raise UserError(f"{key}: {names.unknown(value)}")
            raise UserError(f"{key}: unknown {what} {value!r}: use one of {', '.join(names)} or an existing file")

    if not cfg.eval.benches:
        raise UserError("eval.benches: give at least one bench")
    from .evaluate import suite_of

    for bench in cfg.eval.benches:
        if suite_of(bench):  # a suite (the safety panel or one half): its sets, then its own numbers
            suite_of(bench).expand(bench)
            continue
        named_or_file(bench, data.BENCH_SETS, "eval.benches", "bench")
    named_or_file(cfg.eval.refusal_list, REFUSAL_LISTS, "eval.refusal_list", "refusal list")
    todo = trials(cfg)
    for _, tc in todo:
        data.data_dir(tc.data_dir)  # an explicit data dir must exist
        named_or_file(tc.data, data.TRAIN_SETS, "data", "dataset")
        if tc.method == "safety-mix":
            named_or_file(methods.get(tc.method).settings(tc).data, data.TRAIN_SETS, "method_args.data", "dataset")
        if tc.monitor:
            named_or_file(tc.monitor_bench, data.BENCH_SETS, "monitor_bench", "bench")
            named_or_file(tc.refusal_list, REFUSAL_LISTS, "refusal_list", "refusal list")
        if looks_like_path(tc.model) and not Path(tc.model).expanduser().exists():
            raise UserError(f"model {tc.model!r}: no such file or folder")
        check_max_new_tokens(cfg.eval.max_new_tokens, _context_length(tc.model), f"model {tc.model!r}", "eval.max_new_tokens")
    return todo


def _context_length(spec: str) -> int | None:
    """max_position_embeddings of a local starting model, read from its config.json without loading it; None when
    there is none to read (a hub id, a .gguf): the eval checks it again once the model is loaded."""
    from .models import resolve_run_dir

    config = resolve_run_dir(Path(spec).expanduser()) / "config.json"
    try:
        value = json.loads(config.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):  # no folder or a broken config: training names that mistake
        return None
    return value if isinstance(value, int) else None


def run_sweep(cfg: SweepConfig, backend: str = "local", show_progress: bool = True) -> dict:
    """Counts: skipped (done before), done and failed (here), elsewhere (claimed by a concurrent sweep on the dir)."""
    todo = check_sweep(cfg, backend)
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output dir {out}: cannot create it: {e.strerror}") from None
    atomic.write_yaml(out / "sweep.yaml", cfg.model_dump(mode="json"))
    store = Store(out / STORE_FILE)
    for model in sorted({tc.model for _, tc in todo}):
        now = start_identity(model)
        was = store.pin(f"start_model:{model}", now) if now else None
        if was != now:
            store.close()
            raise UserError(f"{out}: model {model!r} is not the model this sweep's trials started from (it was {was}, "
                            f"now {now}); a finished trial would be skipped as if it had. Use another --output-dir")
    since = time.time()  # failures older than this are retried; a concurrent worker's newer ones are not
    counts = {"skipped": 0, "done": 0, "failed": 0, "elsewhere": 0}
    jobs = {}  # run id -> (name, job), in order: the baseline first
    if cfg.baseline and todo:
        first = todo[0][1]
        base_cfg = {"baseline_of": first.model, "eval": cfg.eval.identity(),
                    "heldout": {k: getattr(first, k) for k in ("data", "heldout_size", "seed", "split_seed", "filter_safety", "max_seq_len")}}
        run_id, status = store.upsert_run(base_cfg, kind="baseline", run_dir=str(out / "baseline"))
        if status == "done":
            counts["skipped"] += 1
        else:
            jobs[run_id] = ("baseline", lambda first=first: run_baseline(cfg, first, show_progress))
    swept = list(dict.fromkeys([*cfg.grid, *(k for t in cfg.trials for k in t)]))
    for h, tc in todo:
        identity = tc.identity(exclude=NOT_IDENTITY)
        run_id, status = store.upsert_run({"train": identity, "eval": cfg.eval.identity()}, run_dir=tc.output_dir)
        if status == "done":
            counts["skipped"] += 1
            continue
        tracker = trial_tracker(cfg, h, {"safebasin.kind": "trial", **{f"sweep.{k}": json.dumps(identity.get(k)) for k in swept}})
        jobs[run_id] = (h, (tc.model_dump(mode="json"), cfg.eval.model_dump(mode="json"), tracker, cfg.keep_weights))
    log.info("sweep %s: %d trials, %d finished before, %d to run", out, len(todo), counts["skipped"], len(jobs))
    try:
        if backend == "ray":
            _run_ray(store, jobs, counts, since)
        else:
            left = dict(jobs)
            while (run_id := store.claim_next(list(left), since)) is not None:
                name, job = left.pop(run_id)
                log.info("[%d/%d] %s", len(jobs) - len(left), len(jobs), name)
                _run_here(store, run_id, name, job if callable(job) else lambda job=job: run_trial(*job, show_progress=show_progress),
                          counts)
    finally:
        store.close()
    counts["elsewhere"] = len(jobs) - counts["done"] - counts["failed"]
    return counts


def start_identity(spec: str) -> str | None:
    """What a local starting model is: the resolved folder (through symlinks, e.g. runs/demo/aligned into the
    cache) and its weight files' names and sizes. A trial's hash has only the path as written, so a path that
    now leads to other weights must stop the sweep. None for a hub id or a built-in name."""
    from .models import looks_like_path, resolve_run_dir

    path = Path(spec).expanduser()
    if not looks_like_path(spec) or not path.exists():
        return None
    real = resolve_run_dir(path.resolve()) if path.is_dir() else path.resolve()
    weights = sorted(real.glob("*.safetensors")) if real.is_dir() else [real]
    return f"{real} (" + ", ".join(f"{w.name} {w.stat().st_size} bytes" for w in weights) + ")"


def trial_tracker(cfg: SweepConfig, name: str, tags: dict):
    """A trial's (or the baseline's) place in the sweep's shared trackers: one MLflow experiment, one TensorBoard dir each."""
    from .train import TRACKERS_DIR, TrackerRun

    out = Path(cfg.output_dir)
    return TrackerRun(out / TRACKERS_DIR, name, {"safebasin.sweep": out.resolve().name, **tags})


def _run_here(store: Store, run_id: int, name: str, job, counts: dict) -> None:
    """One claimed run in this process; a user mistake fails only this run, anything else (Ctrl-C too) stops the sweep."""
    try:
        metrics, artifacts = job()
    except Interrupted as e:
        store.fail(run_id, f"interrupted: {e}")
        raise
    except UserError as e:
        store.fail(run_id, str(e))
        counts["failed"] += 1
        log.error("%s failed: %s", name, e)
        return
    except BaseException:
        store.fail(run_id, traceback.format_exc(limit=3))
        raise
    store.finish(run_id, metrics, artifacts)
    counts["done"] += 1


def _run_ray(store: Store, jobs: dict, counts: dict, since: float) -> None:
    """Trials as Ray tasks on an existing cluster (RAY_ADDRESS), claimed like local ones, recorded here as they land."""
    import ray  # check_sweep made sure it is there

    ray.init(ignore_reinit_error=True)
    remote = ray.remote(run_trial)
    left, pending = dict(jobs), {}
    while (run_id := store.claim_next(list(left), since)) is not None:
        name, job = left.pop(run_id)
        if callable(job):  # the baseline is cheap: run it here
            _run_here(store, run_id, name, job, counts)
            continue
        pending[remote.remote(*job)] = run_id
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        run_id = pending.pop(done[0])
        try:
            metrics, artifacts = ray.get(done[0])
            store.finish(run_id, metrics, artifacts)
            counts["done"] += 1
        except Exception as e:  # a failed task must not lose the others' results
            store.fail(run_id, str(e))
            counts["failed"] += 1
