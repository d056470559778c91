"""`safebasin` command line: one subcommand per job. Options live beside the code they drive."""

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.markup import escape

from .config import LEGACY_KEYS, TrainConfig
from .errors import UserError, describe
from .ui import console, out, say

# rich_markup_mode=None: help text is printed literally, so `pip install 'safebasin[vllm]'` keeps its brackets
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Fine-tune chat LLMs on benign data without leaving their safety basin.")
STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"safebasin {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=_version, help="Print the version and exit.")):
    STATE["debug"] = debug
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)], force=True)
    for noisy in ("transformers", "accelerate", "datasets", "httpx", "huggingface_hub", "urllib3", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _entries(*registries: tuple[str, str]):
    """(name, about) of every entry of the registries, given as (module, attribute) and imported only when
    --help is shown."""
    import importlib

    def entries():
        found = [getattr(importlib.import_module(module, __package__), attr) for module, attr in registries]
        return [(n, registry[n].about) for registry in found for n in registry.names()]

    return entries


# (command, parameter) -> (what its --help lists, the registry's entries): every name a plug-in registers, with its line
LISTINGS = {("train", "method"): ("methods (--method)", _entries((".methods", "REGISTRY"))),
            ("train", "data"): ("data sets (--data)", _entries((".data", "TRAIN_SETS"))),
            ("eval", "bench"): ("benches (--bench; or a file of prompts)",
                                _entries((".data", "BENCH_SETS"), (".evaluate", "SUITES"))),
            ("demo", "scenario"): ("scenarios (SCENARIO)", _entries((".scenario", "SCENARIOS")))}


class RegistryHelp(typer.core.TyperCommand):
    """A command whose --help lists what the registries hold. Filled in only when help is shown: listing them
    discovers the systems, which imports torch, and every other use of the command must start fast."""

    def format_help(self, ctx, formatter):
        blocks = []
        for param in self.params:
            if (self.name, param.name) not in LISTINGS:
                continue
            title, entries = LISTINGS[(self.name, param.name)]
            entries = entries()
            if isinstance(param, typer.core.TyperOption):
                param.help = (param.help or "").split(" One of:")[0] + " One of: " + ", ".join(n for n, _ in entries) + "."
            width = max(len(n) for n, _ in entries)
            blocks.append("\b\n" + title[0].upper() + title[1:] + ":\n" + "\n".join(f"  {n:<{width}}  {about}" for n, about in entries))
        self.epilog = "\n\n".join(blocks) or None
        super().format_help(ctx, formatter)


def config_options(cls, skip: tuple = (), flags: dict | None = None, legacy: dict | None = None):
    """Decorator: one --option per field of the pydantic config `cls`, its help the field's description and None
    meaning "not given" (so the recipe and the YAML file below win). Typer reads a command's options from its
    signature, so the signature is built from the fields: a hand-written list drifts from the config it mirrors.
    `flags`: a field's own option names (e.g. "--keep-safety"); `legacy`: deprecated flag -> (type, help)."""
    import functools
    import inspect
    import typing

    def cli_type(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        if typing.get_origin(annotation) is typing.Literal or any(typing.get_origin(a) in (list, typing.Literal) for a in args):
            return str  # choices and lists arrive as text; the config validates them and names the key
        return args[0] if args[0] in (str, int, float, bool) else None

    def wrap(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = []
        for name, field in cls.model_fields.items():
            kind = cli_type(field.annotation)
            if name in skip or kind is None:
                continue
            dash = name.replace("_", "-")
            decls = (flags or {}).get(name) or (f"--{dash}/--no-{dash}" if kind is bool else f"--{dash}")
            shown = "" if field.default in (None, {}, "") or kind is bool else f" (default {field.default})"
            added.append((name, kind, decls, (field.description or "") + shown))
        added += [(name, kind, f"--{name.replace('_', '-')}", text) for name, (kind, text) in (legacy or {}).items()]
        params = own + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                                          default=typer.Option(None, decls, help=text)) for name, kind, decls, text in added]

        @functools.wraps(fn)
        def command(**values):
            return fn(**values)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap


def key_value(pair: str, flag: str) -> tuple[str, str]:
    """One KEY=VALUE of a repeatable flag (--method-arg, --bench-arg): the key as a Python name, the value as text
    (the method or bench kind that takes it converts and checks it)."""
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{flag} {pair}: expected KEY=VALUE")
    return key.strip().replace("-", "_"), value


def method_args(pairs: list[str]) -> dict:
    """--method-arg KEY=VALUE pairs; a later pair for one key wins."""
    return dict(key_value(pair, "--method-arg") for pair in pairs)


# the flat flags the built-in methods' knobs had (config.LEGACY_KEYS), kept so no user's command breaks
LEGACY_TRAIN_FLAGS = {flat: (float, f"Deprecated: --method-arg {field}=VALUE of {method}.")
                      for flat, (method, field) in LEGACY_KEYS.items() if flat in ("safety_mix_fraction", "interpolate_alpha", "l2_lambda")}


@app.command(cls=RegistryHelp)
@config_options(TrainConfig, skip=("method_args",),
                flags={"filter_safety": "--filter-safety/--keep-safety", "ema_on_cpu": "--ema-on-cpu/--ema-on-device"},
                legacy=LEGACY_TRAIN_FLAGS)
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; flags override its keys."),
    recipe: Optional[str] = typer.Option(None, help="A named recipe (safe: the measured safe default, docs/guidelines.md) "
                                         "or a YAML file, under --config and the flags."),
    method_arg: list[str] = typer.Option([], "--method-arg", help="KEY=VALUE: a setting of the method, checked by it "
                                         "(e.g. weight=1.0 for l2-anchor; repeatable); merged into method_args."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --output-dir (re-running the same command does too)."),
    overwrite: bool = typer.Option(False, help="Start afresh, replacing whatever run is in --output-dir."),
    **fields,
):
    """Fine-tune a model (full or LoRA), optionally with parameter-space EMA. Every option but the first and last
    few is a TrainConfig key (safebasin.config)."""
    from .config import load_train_config
    from .train import train as run

    if resume and overwrite:
        raise UserError("choose one of --resume and --overwrite")
    if fields.get("lora_target_modules") and "," in fields["lora_target_modules"]:
        fields["lora_target_modules"] = [m.strip() for m in fields["lora_target_modules"].split(",") if m.strip()]
    if method_arg:  # layered on top of the method_args the recipe and the file give (config.layered)
        fields["method_args"] = method_args(method_arg)
    cfg = load_train_config(config, fields, recipe)
    run_dir = run(cfg, overwrite=overwrite, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # once, also under `accelerate launch` / torchrun
        say(f"kept model in {run_dir / 'model'}", tag="done")


@app.command("eval", cls=RegistryHelp)
def eval_(
    model_arg: Optional[str] = typer.Argument(None, metavar="[MODEL]", help="Model or run dir (same as --model)."),
    model: Optional[str] = typer.Option(None, help="smollm2-135m-instruct, a HF id, a folder, a .gguf or a run dir."),
    bench: list[str] = typer.Option(["advbench"], help="A named bench (listed below) or a prompts file. Repeatable."),
    utility: bool = typer.Option(False, help="Also held-out loss/perplexity and ROUGE-L."),
    limit: Optional[int] = typer.Option(None, help="First N prompts of each bench."),
    sample: Optional[int] = typer.Option(None, help="A seeded random sample of N prompts instead."),
    seed: int = typer.Option(0, help="Seed for --sample and the held-out split."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Decoding length: 128 for harmful-prompt benches (greedy; the "
                                                  "paper uses 512), 20 for rtp-* (sampled), 64 for toxichat."),
    batch_size: int = typer.Option(16, help="Generation batch size (pinned in eval.json)."),
    backend: str = typer.Option("auto", help="Generation: hf, vllm (pip install 'safebasin[vllm]', GPU), or auto "
                                "(vllm when installed and a GPU is present)."),
    refusal_list: str = typer.Option("gcg", help="Keyword judge list: gcg, qi2024, gcg-api, or a JSON file."),
    judge: str = typer.Option("keyword", help="keyword; llm (also a 1-5 score from an OpenAI-compatible endpoint); "
                              "classifier (also a local classifier or Llama-Guard-style model). Shown side by side."),
    judge_url: Optional[str] = typer.Option(None, help="Judge endpoint base URL, e.g. http://127.0.0.1:8000/v1."),
    judge_model: Optional[str] = typer.Option(None, help="llm: the model name at the endpoint; classifier: a local path."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", help="Name of the env var holding the judge's API key (never the key)."),
    judge_concurrency: int = typer.Option(4, help="Judge requests in flight at once."),
    judge_timeout: float = typer.Option(30.0, help="Seconds to wait for each judge request (> 0)."),
    judge_retries: int = typer.Option(2, help="Retries of a failed judge request (0 = none); then the item is a judge error."),
    prompt_field: Optional[str] = typer.Option(None, help="Prompt column of a local file (detected if omitted)."),
    category_field: Optional[str] = typer.Option(None, help="Column for the per-category breakdown."),
    utility_data: Optional[str] = typer.Option(None, help="Held-out data for a model that is not a run dir (default dolly)."),
    data_dir: Optional[str] = typer.Option(None, help="Where named datasets live."),
    output_dir: Optional[str] = typer.Option(None, help="Where eval.json and generations.jsonl go (default: RUN/eval or runs/eval)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .bin (pickle) weights; they can run code."),
    chat_template: Optional[str] = typer.Option(None, help="A Jinja chat template (file or inline) for a model that "
                                                "ships none (GPT-2, OPT); the rtp-* benches need none."),
    bench_arg: list[str] = typer.Option([], "--bench-arg", help="KEY=VALUE: a setting of a bench kind, checked by the "
                                        "kind that takes it (e.g. samples=5 for rtp-*; repeatable). The four flags "
                                        "below are aliases of rtp-*'s settings."),
    samples: Optional[int] = typer.Option(None, help="rtp-* benches: sampled continuations per prompt (default 25)."),
    top_p: Optional[float] = typer.Option(None, help="rtp-* benches: nucleus sampling p (default 0.9)."),
    steer_alpha: Optional[float] = typer.Option(None, help="An ADLM run: strength in [0, 10] of suppressing the toxic "
                                                "logits (default: the run's own, 6.0 unless set in method_args)."),
    toxicity_scorer: Optional[str] = typer.Option(None, help="rtp-* / toxichat: minilm-rtp (default), profanity-check, "
                                                  "llm:URL|MODEL (an OpenAI-compatible endpoint; key from "
                                                  "$OPENAI_API_KEY), or hf:PATH (a local classifier)."),
    report_to: str = typer.Option("none", help="Experiment trackers for the metrics: tensorboard, mlflow, wandb (offline; "
                                  "comma-separated), or none; a run dir's go to RUN/trackers, beside its training's."),
):
    """Harmful rate (keyword judge, 95% CI, per category) and utility of a model or run dir."""
    from .evaluate import evaluate

    spec = model_arg or model
    if not spec:
        raise UserError("give a model: safebasin eval MODEL or --model MODEL")
    judge2 = None
    from .judges import check_llm_settings

    check_llm_settings(judge_concurrency, judge_retries, judge_timeout)
    if judge == "llm":
        from .judges import LLMJudge

        if not judge_url or not judge_model:
            raise UserError("--judge llm needs --judge-url and --judge-model")
        judge2 = LLMJudge(judge_url, judge_model, api_key_env=judge_api_key_env, concurrency=judge_concurrency,
                          retries=judge_retries, timeout=judge_timeout)
    elif judge == "classifier":
        from .judges import ClassifierJudge

        if not judge_model:
            raise UserError("--judge classifier needs --judge-model PATH")
        judge2 = ClassifierJudge(judge_model)
    elif judge != "keyword":
        raise UserError(f"unknown judge {judge!r}: use keyword, llm or classifier")
    if Path(spec).is_dir() and (Path(spec) / "model").is_dir() and output_dir is None:
        output_dir = str(Path(spec) / "eval")
    out_dir = Path(output_dir or "runs/eval")
    results = evaluate(spec, bench, out_dir, utility=utility, limit=limit, sample=sample, seed=seed,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, refusal_list=refusal_list,
                       data_dir=data_dir, prompt_field=prompt_field, category_field=category_field,
                       utility_data=utility_data, judge2=judge2, backend=backend, allow_pickle=allow_pickle,
                       report_to=report_to, chat_template=chat_template, **bench_args(bench_arg, {"samples": samples, "top_p": top_p,
                                                                      "steer_alpha": steer_alpha, "scorer": toxicity_scorer}))
    print_eval_table(results)
    say(f"wrote {out_dir / 'eval.json'} and {out_dir / 'generations.jsonl'}")


def bench_args(pairs: list[str], aliases: dict) -> dict:
    """--bench-arg KEY=VALUE pairs, with the alias flags that were given; the kinds check the values."""
    args = {k: v for k, v in aliases.items() if v is not None}
    for pair in pairs:
        key, value = key_value(pair, "--bench-arg")
        if key in args and str(args[key]) != value:
            raise UserError(f"--bench-arg {pair}: {key} is already {args[key]} (from its own flag or an earlier --bench-arg)")
        args[key] = value
    return args


def print_eval_table(results: dict) -> None:
    from .ui import LiteralTable as Table  # cells from data print as written

    table = Table(title=escape(f"judge {results['settings']['judge']}, greedy, max_new_tokens {results['settings']['max_new_tokens']}"))
    for col in ("model", "bench", "n", "keyword judge", "95% CI", "second judge", "mean score", "held-out loss", "ROUGE-L"):
        table.add_column(col)
    warnings, systems = [], {}
    for label, entry in results["models"].items():
        util = entry.get("utility", {})
        for name, b in entry["benchmarks"].items():
            if b["kind"] not in ("harmful", "over-refusal"):  # a system's bench (toxicity, dialogue, kg): its own table
                systems.setdefault(b["kind"], []).append((label, name, b))
                continue
            what = "refusal" if b["kind"] == "over-refusal" else "harmful"
            value = b["refusal_rate"] if what == "refusal" else b["harmful_rate"]
            second = b.get("llm_judge") or b.get("classifier_judge")
            if second is None:
                second_cell = ""
            elif second["harmful_rate"] is None:  # every judge call failed: no verdict, not "0% harmful"
                second_cell = f"no verdicts ({second['judge_errors']} judge errors)"
            else:
                second_cell = f"{second['harmful_rate']:.1%} harmful ({second['judge_errors']} errors)"
            if second and second["judge_errors"]:
                warnings.append(f"{label} {name}: {second['judge']} gave no verdict on {second['judge_errors']} of "
                                f"{second['n'] + second['judge_errors']} items (judge errors, left out of its rate)")
            table.add_row(label, name, str(b["n"]), "no verdicts" if value is None else f"{value:.1%} {what}",
                          "" if b["ci_low"] is None else f"{b['ci_low']:.1%}-{b['ci_high']:.1%}", second_cell,
                          f"{second['mean_score']:.2f}" if second and second.get("mean_score") is not None else "",
                          f"{util['heldout_loss']:.3f}" if util else "", f"{util['rougeL']:.3f}" if util else "")
    if table.rows:
        out.print(table)
    for kind, rows in systems.items():
        print_system_table(kind, rows)
    from .evaluate import SUITES

    for label, entry in results["models"].items():  # a suite's own lines (the panel: worst set and macro mean per half)
        for suite in SUITES.values():
            for line in suite.describe(entry):
                out.print(f"{label} {line}", highlight=False, markup=False)
    for w in warnings:
        say(w, tag="warning", style="yellow")


def print_system_table(kind: str, rows: list[tuple[str, str, dict]]) -> None:
    """One table per bench kind, its headline numbers (as the kind declares them); the rest is in eval.json."""
    from .evaluate import BENCH_KINDS, headline, headline_columns
    from .ui import LiteralTable as Table

    title = BENCH_KINDS.lookup(kind).title or f"{kind} benches"
    table = Table(title=escape(f"{title} (every number in eval.json)"))
    for col in ("model", "bench", "n", *headline_columns(kind)):
        table.add_column(col)
    for label, name, b in rows:
        table.add_row(label, name, str(b.get("n", "")), *headline(b))
    out.print(table)


@app.command(cls=RegistryHelp)
def demo(
    scenario: Optional[str] = typer.Argument(None, help="A scenario (listed below); default safety, the EMA story."),
    quick: bool = typer.Option(False, "--quick", help="A few minutes on 2 CPU cores (CI; each scenario's doc gives its "
                               "time): fewer prompts and steps."),
    full: bool = typer.Option(False, "--full", help="The scenario's full preset: more prompts and longer training (the "
                              "safety demo: all 520 AdvBench prompts); slow on a CPU."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML overriding the preset's keys."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the embedded SmolLM2-135M-Instruct)."),
    data_dir: Optional[str] = typer.Option(None, help="Where named datasets live."),
    seed: Optional[int] = typer.Option(None),
    output_dir: Optional[str] = typer.Option(None, help="Where summary.json, the plot and report.html go "
                                             "(default runs/demo, or runs/demo-SCENARIO): a new or empty dir, or "
                                             "this scenario's own (it resumes there)."),
    overwrite: bool = typer.Option(False, help="Let the demo replace a safebasin run in an arm's dir that this demo "
                                   "did not make (never files safebasin did not write)."),
):
    """Run a system's story end to end and write its report: safety (the default) aligns, then fine-tunes on Dolly
    with bad vs good optimisation, with and without EMA; every other scenario is listed below."""
    from .scenario import SCENARIOS

    if quick and full:
        raise UserError("choose one of --quick and --full")
    preset = "quick" if quick else "full" if full else "default"
    overrides = {"model": model, "data_dir": data_dir, "seed": seed}
    scenario = scenario or "safety"
    chosen = SCENARIOS.lookup(scenario)
    output_dir = output_dir or chosen.output_dir or f"runs/demo-{scenario}"
    summary = chosen.start(chosen.config(preset, str(config) if config else None, overrides), output_dir, overwrite=overwrite)
    print_demo_table(summary, scenario, Path(output_dir))


def print_demo_table(summary: dict, scenario: str, output_dir: Path) -> None:
    """Any scenario's table: its short `terminal` table if it has one, else its `table`; then where it wrote."""
    from .ui import LiteralTable as Table  # cells from data print as written

    shown = summary.get("terminal") or summary["table"]
    table = Table(title=escape(shown.get("title") or f"demo {scenario}, seed {summary['seed']}"))
    for col in shown["columns"]:
        table.add_column(col)
    for row in shown["rows"]:
        table.add_row(*map(str, row))
    out.print(table)
    for note in shown.get("notes", []):
        out.print(escape(note), highlight=False)
    files = "  ".join(f"{Path(f).stem}: {output_dir / f}" for f in shown.get("outputs", ["report.html"]))
    say(f"{files}; wall time {summary['timings_s']['total']:.0f} s")


@app.command()
def sweep(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Sweep YAML: base, grid, eval, output_dir."),
    grid: list[str] = typer.Option([], help="KEY=V1,V2,... e.g. lr=1e-5,5e-5 (repeatable; adds to the YAML grid)."),
    model: Optional[str] = typer.Option(None, help="Base model for every trial."),
    data: Optional[str] = typer.Option(None, help="Training data for every trial."),
    data_dir: Optional[str] = typer.Option(None),
    steps: Optional[int] = typer.Option(None),
    output_dir: Optional[str] = typer.Option(None, help="Sweep dir (runs.db, runs/, report)."),
    backend: str = typer.Option("local", help="local (one after another) or ray (an existing Ray cluster)."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any training setting, eval.KEY=VALUE for an eval "
                                   "setting (e.g. eval.limit=5); repeatable, overrides the YAML."),
    report_to: Optional[str] = typer.Option(None, help="Experiment trackers for every trial: tensorboard, mlflow, wandb "
                                            "(offline; comma-separated), or none; shared under the sweep dir's trackers/."),
):
    """Train and evaluate a grid of configs; re-running skips finished trials. Exits 1 when a trial failed."""
    from .sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(str(config) if config else None, grid,
                            {"model": model, "data": data, "data_dir": data_dir, "steps": steps, "report_to": report_to},
                            output_dir, set_)
    counts = run_sweep(cfg, backend=backend)
    say(f"sweep {cfg.output_dir}: {counts['done']} run, {counts['skipped']} already finished, {counts['failed']} failed"
        + (f", {counts['elsewhere']} taken by another sweep on this dir" if counts["elsewhere"] else ""))
    if counts["failed"]:
        err = UserError(f"{counts['failed']} of {counts['done'] + counts['failed']} runs failed in {cfg.output_dir}; "
                        f"`safebasin runs show {cfg.output_dir} ID` gives the error")
        err.exit_code = 1  # the sweep itself worked; some trials did not
        raise err


runs_app = typer.Typer(help="List and inspect the runs in a sweep's results store.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(runs_app, name="runs")


def _store(sweep_dir: Path):
    """Read-only: listing must not create tables in, or change the journal of, a file that is not ours."""
    from .store import STORE_FILE, Store

    if not (sweep_dir / STORE_FILE).is_file():
        raise UserError(f"{sweep_dir}: no {STORE_FILE} (not a sweep dir)")
    return Store(sweep_dir / STORE_FILE, readonly=True)


@runs_app.command("ls")
def runs_ls(sweep_dir: Path = typer.Argument(..., help="A sweep dir.")):
    """One line per run: id, hash, status, key settings, harmful rate."""
    from .ui import LiteralTable as Table  # cells from data print as written

    store = _store(sweep_dir)
    table = Table()
    for col in ("id", "hash", "kind", "status", "method", "lr", "batch", "steps", "ema_beta", "harmful rate"):
        table.add_column(col, no_wrap=True)
    for r in store.runs():
        t = r["config"].get("train", {})
        harm = next((m["value"] for m in store.metrics(r["id"]) if m["model"] == "model" and m["name"] == "harmful_rate"
                     and m["category"] == "" and m["benchmark"] != "utility"), None)
        table.add_row(str(r["id"]), r["config_hash"][:8], r["kind"], r["status"], str(t.get("method", "")), str(t.get("lr", "")),
                      str(t.get("batch_size", "")) + (f"x{t['grad_accum']}" if t.get("grad_accum", 1) > 1 else ""),
                      str(t.get("steps", "")), str(t.get("ema_beta", "")), "" if harm is None else f"{harm:.1%}")
    out.print(table)


@runs_app.command("show")
def runs_show(sweep_dir: Path = typer.Argument(...), run: str = typer.Argument(..., help="Run id or hash (prefix).")):
    """A run's config, status, metrics and artefacts as JSON."""
    import json

    store = _store(sweep_dir)
    r = store.run(run)
    if r is None:
        raise UserError(f"{sweep_dir}: no run {run!r}")
    r.pop("config_json")
    r["metrics"] = [{k: m[k] for k in ("model", "benchmark", "category", "name", "value")} for m in store.metrics(r["id"])]
    r["artifacts"] = store.artifacts(r["id"])
    print(json.dumps(r, indent=2, default=str))


@app.command()
def report(
    sweep_dir: Path = typer.Argument(..., metavar="DIR", help="A sweep dir, or one `safebasin train` run dir."),
    max_harm_increase: float = typer.Option(0.02, help="Recommend only trials within this of the starting model's harmful rate."),
    utility: str = typer.Option("heldout_loss", help="heldout_loss (lower is better) or rougeL (higher is better)."),
    choose_on: Optional[str] = typer.Option(None, help="The bench to choose on (default: panel:choose if the sweep "
                                            "scored it, else advbench). Choosing on panel:choose reports every choice "
                                            "on panel:check beside it, with the gap."),
):
    """A sweep: Pareto front, heat maps and a recommendation. A run: training and monitor curves, eval, basin plot."""
    from rich.markdown import Markdown

    from .report import run_report
    from .safety.sweep_analysis import UTILITY, sweep_report
    from .store import STORE_FILE

    if not (sweep_dir / STORE_FILE).is_file() and (sweep_dir / "config.yaml").is_file():
        say(f"wrote {run_report(sweep_dir)} and {sweep_dir / 'training.png'}")
        return
    if utility not in UTILITY:
        raise UserError(f"--utility must be one of {', '.join(UTILITY)}")
    summary = sweep_report(sweep_dir, max_harm_increase, utility, choose_on)
    out.print(Markdown(summary["markdown"]))
    say(f"wrote {sweep_dir / 'report.html'}, {sweep_dir / 'report.md'} and the PNGs")


@app.command()
def align(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML of alignment settings (safebasin.safety.align.AlignConfig); flags override it."),
    model: Optional[str] = typer.Option(None, help="The base model to align (default: the embedded SmolLM2-135M-Instruct)."),
    data_dir: Optional[str] = typer.Option(None, help="Where named datasets live."),
    benign: Optional[str] = typer.Option(None, help="General instruction data: alpaca (default), a train set name or a file."),
    safety: Optional[str] = typer.Option(None, help="Harmful request -> refusal rows: safety (default) or a file."),
    rows: Optional[int] = typer.Option(None, help="Rows in the mix (one pass)."),
    safety_fraction: Optional[float] = typer.Option(None, help="Share of the mix that is safety rows."),
    lr: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    max_seq_len: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    output_dir: Optional[str] = typer.Option(None, help="Where align.yaml, mix.jsonl, mix_manifest.json and run/ go "
                                             "(default: the cache, keyed by the recipe; the demo shares it)."),
    overwrite: bool = typer.Option(False, help="Rebuild the mix and retrain in an aligned dir of another recipe."),
):
    """Align a base model: instruction data with safety refusals mixed in, every row kept apart (by prompt and
    near-duplicates) from every scored prompt. The aligned model is OUTPUT_DIR/run/model."""
    from .config import layered
    from .safety.align import AlignConfig, aligned_model
    from .safety.align import align as align_model

    flags = {"model": model, "data_dir": data_dir, "benign": benign, "safety": safety, "rows": rows,
             "safety_fraction": safety_fraction, "lr": lr, "batch_size": batch_size, "max_seq_len": max_seq_len, "seed": seed}
    cfg = layered(AlignConfig, {}, config, flags, "align options")
    out_dir = align_model(cfg, output_dir, overwrite=overwrite)
    say(f"aligned model: {aligned_model(out_dir)}  (mix and what was kept apart: {out_dir / 'mix_manifest.json'})")


@app.command("basin")
def basin_cmd(
    run_dir: Path = typer.Argument(..., help="A finished `safebasin train` output dir."),
    bench: str = typer.Option("advbench", help="The eval bench; the probe is drawn from a disjoint set (JBB for AdvBench)."),
    probe: int = typer.Option(32, help="Probe prompts (seeded sample)."),
    max_new_tokens: int = typer.Option(32),
):
    """Harmful rate and held-out loss along θ0 → θ_raw, with the EMA weights placed on the line."""
    from .safety.basin import basin

    result = basin(run_dir, bench, probe, max_new_tokens)
    for p in result["points"]:
        out.print(f"α={p['alpha']:<5} harmful {p['harmful_rate']:.1%}  held-out loss {p['heldout_loss']:.4f}")
    if result["ema"]:
        e = result["ema"]
        out.print(f"EMA at α={e['alpha']:.3f} (off the line by {e['off_line_norm']:.3g}): harmful {e['harmful_rate']:.1%}  "
                  f"held-out loss {e['heldout_loss']:.4f}")
    from .report import run_report

    say(f"wrote {run_dir / 'basin.json'}, {run_dir / 'basin.png'} and {run_report(run_dir)}")


def main() -> None:
    """The one boundary: every error, expected or not, leaves as one escaped, length-capped line."""
    try:
        app()  # standalone: typer handles usage errors (exit 2) and --help itself
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the boundary; --debug shows the traceback
        if STATE["debug"]:
            raise
        message, code = describe(e)
        say(message, tag="error", style="red")
        sys.exit(code)


if __name__ == "__main__":
    main()
