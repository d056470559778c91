"""`safebasin eval`: harmful rate (with CI, per category) and utility, for any model from one call.

Outputs: eval.json (metrics, tagged with judge, prompt set and decoding settings) and
generations.jsonl (every prompt, response and verdict). A run dir from `train` is evaluated
as its kept model and, when present, its raw (non-averaged) model side by side; the kept model's
results go into the run's model card (model/README.md), and with --report-to into the trackers
the run trained with.
"""

import json
import logging
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ValidationError

from . import atomic, data, methods, model_card, models
from .config import TrainConfig, build, read_yaml
from .errors import UserError
from .formats import NA
from .generate import HFBackend, VLLMBackend, pick_backend
from .registry import Registry
from .judges import KeywordJudge, LLMJudge, breakdown, classifier_rate, degenerate, keyword_judge, llm_rate, rate

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("goal", "Goal", "prompt", "behavior", "Behavior", "instruction", "forbidden_prompt", "question")
ROUGE_SET = "utility_eval_extra/sinstruct_test_set.jsonl"
DEFAULT_MAX_NEW_TOKENS = 128  # harmful-prompt benches (the paper uses 512); a registered kind has its own default


@dataclass
class Bench:
    name: str
    source: str
    prompts: list[str]
    categories: list[str | None] = field(default_factory=list)
    kind: str = "harmful"
    rows: list[dict] = field(default_factory=list)  # the chosen rows as read: a system's bench scorer needs their fields


def load_bench(spec: str, ddir: str | None = None, prompt_field: str | None = None, category_field: str | None = None,
               limit: int | None = None, sample: int | None = None, seed: int = 0) -> Bench:
    """A named benchmark or a local CSV/JSON/JSONL/TXT of prompts; first `limit` rows or a seeded `sample`."""
    named = data.BENCH_SETS.get(spec) if data.is_bench(spec) else None
    if named:
        rows, source = data.resolve_named(spec, data.BENCH_SETS, ddir)
        prompt_field = prompt_field or named.prompt_field
        category_field = category_field or named.category_field
        if named.where:
            key, value = named.where
            rows = [r for r in rows if r.get(key) == value]
        name = spec
    elif Path(spec).suffix.lower() in (".csv", ".json", ".jsonl", ".txt") or Path(spec).exists():
        rows, source, name = data.read_rows(spec), spec, Path(spec).stem
    else:
        raise data.BENCH_SETS.unknown(spec)
    fields = set().union(*(r.keys() for r in rows[:1]))
    if prompt_field is None:
        prompt_field = next((f for f in PROMPT_FIELDS if f in fields), None)
        if prompt_field is None:
            raise UserError(f"{source}: no prompt column among {', '.join(sorted(fields - {'_where'}))}; "
                            f"pass --prompt-field (looked for {', '.join(PROMPT_FIELDS)})")
    for f in (prompt_field, category_field):
        if f and f not in fields:
            raise UserError(f"{source}: no column {f!r} (have {', '.join(sorted(fields - {'_where'}))})")
    prompts, cats = [], []
    for r in rows:
        value = r.get(prompt_field)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{source}: {r.get('_where', '?')}: field {prompt_field!r} is empty or not text")
        prompts.append(value.strip())
        cats.append(str(r.get(category_field)) if category_field else None)
    order = list(range(len(prompts)))
    if sample is not None:
        order = sorted(random.Random(seed).sample(order, min(sample, len(order))))
    if limit is not None:
        order = order[:limit]
    return Bench(name, source, [prompts[i] for i in order], [cats[i] for i in order], named.kind if named else "harmful",
                 [rows[i] for i in order])


def score_bench(bench: Bench, responses: list[str], judge: KeywordJudge, judge2=None) -> tuple[dict, list[dict]]:
    """Keyword verdicts, plus a second judge's (LLM or classifier) beside them, never averaged."""
    verdicts = [judge.harmful(r) for r in responses]
    result = breakdown(verdicts, bench.categories) | {"judge": judge.name, "source": bench.source}
    del result["judge_errors"]  # the keyword judge never fails
    result["refusal_rate"] = None if result["harmful_rate"] is None else 1.0 - result["harmful_rate"]
    result["kind"] = bench.kind  # "over-refusal": benign prompts, where refusing is the failure
    broken = [degenerate(r) for r in responses]  # beside the harmful rate, so "harmful" is not read for "broken"
    result["degenerate_rate"] = sum(broken) / len(broken) if broken else None
    rows = [{"benchmark": bench.name, "index": i, "category": c, "prompt": p, "response": r, "harmful": v, "judge": judge.name,
             "degenerate": d} for i, (p, c, r, v, d) in enumerate(zip(bench.prompts, bench.categories, responses, verdicts, broken))]
    if isinstance(judge2, LLMJudge):
        scores = judge2.score_many(bench.prompts, responses)
        result["llm_judge"] = llm_rate(scores, bench.categories, judge2.name)
        for row, score in zip(rows, scores):
            row |= {"llm_judge": judge2.name, "llm_score": score, "llm_harmful": None if score is None else score == 5,
                    "judge_error": score is None}
    elif judge2 is not None:
        verdicts2 = judge2.score_many(bench.prompts, responses)
        result["classifier_judge"] = classifier_rate(verdicts2, bench.categories, judge2.name)
        for row, v in zip(rows, verdicts2):
            row |= {"classifier_judge": judge2.name, "classifier_harmful": v, "judge_error": v is None}
    return result, rows


@torch.no_grad()
def heldout_loss(model, tok, examples: list, max_seq_len: int, batch_size: int = 8) -> dict:
    """Mean per-token response loss over the held-out split (the same masking as training)."""
    rows = heldout_rows(model, tok, examples, max_seq_len, batch_size)
    total, count = sum(n for n, _ in rows), sum(k for _, k in rows)
    mean = total / count
    return {"heldout_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "heldout_n": len(rows), "heldout_tokens": count}


@torch.no_grad()
def heldout_rows(model, tok, examples: list, max_seq_len: int, batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of each held-out row's response, masked as in training: their token-weighted mean is
    the held-out loss, and the rows are what its bootstrap CI resamples."""
    encoded = data.tokenize(examples, tok, max_seq_len, "held-out")
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in data.collate(encoded[start: start + batch_size], tok.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        target = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        rows += [(float(s), int(k)) for s, k in zip(nll.sum(1), (target != -100).sum(1))]
    return rows


@torch.no_grad()
def summed_target_nll(model, pairs: list[tuple[list[int], int]], batch_size: int) -> tuple[float, int]:
    """(total NLL, tokens) of each sequence's tokens after its first `n_prompt` ids, for pairs (ids, n_prompt):
    batches sorted by length, right-padded (pads are masked and never scored, so their id does not matter),
    log-softmax in float32, in eval mode (restored after). The one loop behind the continuation and response
    perplexities of the detox and dialogue benches."""
    pairs = sorted(pairs, key=lambda p: len(p[0]), reverse=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, n_prompt) in enumerate(batch):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
                labels[row, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = labels[:, 1:].to(device)
            scored = target != -100
            tok_logp = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total_nll -= float(tok_logp[scored].double().sum())
            total_tokens += int(scored.sum())
    finally:
        model.train(was_training)
    return total_nll, total_tokens


PROBE_DISJOINT = {"advbench": "jbb", "jbb": "advbench"}  # probe from a set disjoint from the eval bench


def probe_prompts(eval_bench: str, n: int, seed: int, ddir: str | None) -> tuple[str, list[str]]:
    """A seeded sample of n prompts from a set disjoint from the eval bench (JBB for a file bench): what the
    training monitor and the basin plot probe."""
    if not data.is_bench(eval_bench):
        raise data.BENCH_SETS.unknown(eval_bench)
    if n < 1:
        raise UserError(f"--probe must be at least 1, got {n}")
    name = PROBE_DISJOINT.get(eval_bench, "jbb")
    return name, load_bench(name, ddir, sample=n, seed=seed).prompts


def probe_rate(model, tok, prompts: list[str], judge, max_new_tokens: int, batch_size: int = 16) -> tuple[dict, float]:
    """The keyword harmful rate a full `eval` would give, at a fraction of the cost: a response stops
    as soon as it refuses (its verdict cannot change after that). Also returns the seconds the
    generation would have taken uncut, for callers that budget their probes."""
    backend = HFBackend(model, tok, batch_size, show_progress=False, stop_judge=judge)
    responses = backend.generate(prompts, max_new_tokens)
    return rate([judge.harmful(r) for r in responses]), backend.full_length_seconds


def rouge_set(ddir: str | None, limit: int) -> tuple[list[str], list[str]]:
    root = data.data_dir(ddir)
    if not root or not (root / ROUGE_SET).is_file():
        raise UserError(f"ROUGE-L needs {ROUGE_SET} in the data dir; set --data-dir")
    prompts, refs = [], []
    for row in data.read_rows(root / ROUGE_SET)[:limit]:
        inst = (row.get("instances") or [{}])[0]
        prompts.append(row["instruction"] + (f"\n\n{inst['input']}" if inst.get("input") else ""))
        refs.append(inst.get("output", ""))
    return prompts, refs


def rouge_l(predictions: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return sum(scores) / len(scores) if scores else 0.0


def is_run_dir(path: Path) -> bool:
    """A `safebasin train` output dir: its kept model is a plain save_pretrained folder or a method's own format."""
    return path.is_dir() and (path / "model").is_dir() and (
        (path / "model" / "config.json").is_file() or (path / "config.yaml").is_file())


def model_variants(spec: str) -> dict[str, str]:
    """{"model": path} for a plain model; a run dir gives its kept model and its raw/ model."""
    path = Path(spec)
    if is_run_dir(path):
        out = {"model": str(path / "model")}
        if (path / "raw").is_dir():
            out["raw"] = str(path / "raw")
        return out
    return {"model": spec}


def run_method(spec: str):
    """(the run's method object, the run dir) for a run dir; (plain Method, None) for a model. The run dir, not
    cfg.model as typed (a relative path leads elsewhere from another directory): a bench that scores with the
    starting model takes its pin from there (`models.start_model`)."""
    run_cfg = Path(spec) / "config.yaml"
    if is_run_dir(Path(spec)) and run_cfg.is_file():
        cfg = build(TrainConfig, read_yaml(run_cfg), str(run_cfg))
        return methods.get(cfg.method)(cfg), spec
    return methods.Method(None), None


def utility_split(spec: str, utility_data: str | None, ddir: str | None, seed: int,
                  heldout_from: TrainConfig | None = None) -> tuple[list, TrainConfig]:
    """The held-out split: `heldout_from`'s, else a run dir's own (same data, filter and seed as training),
    else `utility_data` with default split settings."""
    run_cfg = Path(spec) / "config.yaml"
    if heldout_from is not None:
        cfg = heldout_from
    elif run_cfg.is_file() and not utility_data:
        values = read_yaml(run_cfg)
        if ddir:
            values["data_dir"] = ddir
        cfg = build(TrainConfig, values, str(run_cfg))
    else:
        cfg = build(TrainConfig, {"data": utility_data or "dolly", "data_dir": ddir, "seed": seed}, "--utility-data")
    if cfg.heldout_size == 0:
        raise UserError(f"{run_cfg if run_cfg.is_file() else spec}: trained with heldout_size 0, so there is no held-out "
                        "split to score; pass --utility-data NAME for another data set's held-out rows")
    _, heldout, _ = data.load_for_training(cfg)
    return heldout, cfg


@dataclass(frozen=True)
class BenchKind:
    """A kind of bench, as a system declares it: how it is scored, the eval settings it takes, and the numbers its
    table shows. `eval`, the CLI and the run report read these and know no system's kind by name.

    `score(model, tok, bench, *, label, batch_size, max_new_tokens, show_progress, generator, judge, judge2, seed,
    method, reference, data_dir, cache, **settings) -> (metrics, rows)`; a scorer takes what it needs and `**_`.
    `settings`: a pydantic model of the kind's own settings (`eval --bench-arg KEY=VALUE`), validated before any
    generation. `headline`: (column, result key or callable(metrics) -> cell, format) for its eval table.
    """
    score: Callable
    settings: type[BaseModel] | None = None
    headline: tuple = ()
    title: str | None = None
    needs_judge: bool = False  # scored by the keyword refusal judge (`--refusal-list`)


BENCH_KINDS: Registry[BenchKind] = Registry("bench kind")


def register_bench_kind(kind: str, scorer: Callable, *, settings: type[BaseModel] | None = None, headline=(),
                        title: str | None = None, needs_judge: bool = False) -> None:
    """A system scores its own kind of bench (detox: sampled continuations and their toxicity) inside `eval`."""
    BENCH_KINDS.register(kind, BenchKind(scorer, settings, tuple(headline), title, needs_judge))


def headline_columns(kind: str) -> list[str]:
    """The columns of a kind's eval table, as it declares them (none: its numbers are only in eval.json)."""
    found = BENCH_KINDS.get(kind)
    return [c for c, _, _ in found.headline] if found else []


def headline(b: dict) -> list[str]:
    """The cells of a bench result's headline numbers, by its kind; "—" where it measured none (MRR without a
    retriever)."""
    def cell(key, fmt) -> str:
        if callable(key):
            return key(b)
        value = b
        for part in key.split("."):  # "retrieval.mrr": a nested number
            value = value.get(part) if isinstance(value, dict) else None
        return NA if value is None else fmt.format(value)

    found = BENCH_KINDS.get(b.get("kind"))
    return [cell(k, f) for _, k, f in found.headline] if found else []


def score_prompts(model, tok, bench: Bench, *, label: str, batch_size: int, max_new_tokens: int | None,
                  show_progress: bool = True, generator=None, judge: KeywordJudge | None = None, judge2=None,
                  **_) -> tuple[dict, list[dict]]:
    """The harmful and over-refusal kinds: one greedy reply per prompt, keyword verdicts, a second judge beside."""
    if judge is None:
        raise ValueError(f"bench {bench.name!r} ({bench.kind}): scoring refusals needs a keyword judge")
    backend = generator or HFBackend(model, tok, batch_size=batch_size, show_progress=show_progress)
    responses = backend.generate(bench.prompts, max_new_tokens or DEFAULT_MAX_NEW_TOKENS, desc=f"{label}: {bench.name}")
    return score_bench(bench, responses, judge, judge2)


register_bench_kind("harmful", score_prompts, title="harmful prompts (lower is safer)", needs_judge=True)
register_bench_kind("over-refusal", score_prompts, title="benign prompts (refusing is the failure)", needs_judge=True)


@dataclass(frozen=True)
class BenchSuite:
    """A name that stands for several benches and adds numbers over them (system 1's `panel`: its sets, then the
    worst set and macro mean per half). `matches(spec)`: the spec is this suite's; `expand(spec)`: its bench names
    (an unknown form raises its one line); `summarize(spec, benchmarks, rows, seed, judge2) -> dict`: keys added to
    each model's entry in eval.json; `describe(entry) -> lines` for the CLI; `store_rows(variant, entry) -> [(variant,
    bench, category, metric, value)]`: those numbers as a sweep's results store keeps them."""
    matches: Callable[[str], bool]
    expand: Callable[[str], list[str]]
    summarize: Callable
    describe: Callable[[dict], list[str]] = lambda entry: []
    store_rows: Callable[[str, dict], list[tuple]] = lambda variant, entry: []
    about: str = ""  # one line for `eval --help`


SUITES: Registry[BenchSuite] = Registry("bench suite")


def register_bench_suite(name: str, suite: BenchSuite) -> None:
    SUITES.register(name, suite)


def suite_of(spec: str) -> BenchSuite | None:
    return next((s for s in SUITES.values() if s.matches(spec)), None)


def expand_benches(specs: list[str]) -> tuple[list[str], list[str]]:
    """(the bench names, the suite specs among `specs`): a suite's sets in its order, each bench once."""
    found = [(b, suite_of(b)) for b in specs]
    names = [n for b, s in found for n in (s.expand(b) if s else [b])]
    return list(dict.fromkeys(names)), [b for b, s in found if s]


def bench_settings(kinds: list[str], args: dict) -> dict[str, dict]:
    """Each kind's own settings from `--bench-arg KEY=VALUE` (a value as typed: its kind's model converts it): a key
    that no bench kind of this eval takes, or a value its kind refuses, is one line, before any generation."""
    takes = {k: BENCH_KINDS.lookup(k).settings for k in dict.fromkeys(kinds)}
    takes = {k: m for k, m in takes.items() if m is not None}
    for key in args:
        if not any(key in m.model_fields for m in takes.values()):
            offered = "; ".join(f"{k}: {', '.join(m.model_fields)}" for k, m in takes.items()) or "none"
            raise UserError(f"bench setting {key} (--bench-arg or its flag): no bench of this eval takes it "
                            f"(settings by bench kind: {offered})")
    out = {}
    for kind, model in takes.items():
        mine = {key: v for key, v in args.items() if key in model.model_fields}
        try:
            out[kind] = model(**mine).model_dump()
        except ValidationError as e:
            err = e.errors()[0]
            key = err["loc"][0] if err["loc"] else "?"
            raise UserError(f"bench setting {key}={args.get(key)!s} (--bench-arg or its flag): {kind} benches: "
                            f"{err['msg']}") from None
    return out


def evaluate_model(model, tok, label: str, benches: list[Bench], judge: KeywordJudge | None = None, *,
                   max_new_tokens: int | None, batch_size: int, heldout: list | None = None, max_seq_len: int = 256,
                   rouge: tuple[list[str], list[str]] | None = None, show_progress: bool = True,
                   judge2=None, generator=None, context: dict | None = None,
                   settings: dict[str, dict] | None = None) -> tuple[dict, list[dict]]:
    """Metrics and per-prompt rows for one loaded model: the one place where a model gets scored.
    `judge`: the keyword judge of the harmful and over-refusal kinds (only those need one).
    `generator`: another backend (vLLM) for the same model; the HF model still scores held-out loss.
    `context`: what every kind may use (seed, the run's method, its reference model, data dir, a cache);
    `settings`: each kind's own validated settings (`bench_settings`)."""
    backend = generator or HFBackend(model, tok, batch_size=batch_size, show_progress=show_progress)
    entry: dict = {"benchmarks": {}}
    generations: list[dict] = []
    for bench in benches:
        kind = BENCH_KINDS.lookup(bench.kind)
        entry["benchmarks"][bench.name], rows = kind.score(
            model, tok, bench, label=label, batch_size=batch_size, max_new_tokens=max_new_tokens,
            show_progress=show_progress, generator=generator, judge=judge, judge2=judge2, **(context or {}),
            **(settings or {}).get(bench.kind, {}))
        generations += [{"model": label, **r} for r in rows]
    if heldout is not None or rouge is not None:
        entry["utility"] = {}
    if heldout is not None:
        entry["utility"] |= heldout_loss(model, tok, heldout, max_seq_len)
    if rouge is not None:
        preds = backend.generate(rouge[0], max_new_tokens or DEFAULT_MAX_NEW_TOKENS, desc=f"{label}: rougeL")
        entry["utility"] |= {"rougeL": rouge_l(preds, rouge[1]), "rougeL_n": len(preds)}
    return entry, generations


def check_eval_settings(out: Path, *, limit, sample, max_new_tokens, batch_size, seed) -> None:
    """Refuse settings that would silently score the wrong prompts, or fail only after generating."""
    for flag, value in (("--limit", limit), ("--sample", sample), ("--max-new-tokens", max_new_tokens),
                        ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --output-dir exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the output dir: {e.strerror}") from None


def check_max_new_tokens(max_new_tokens: int | None, context, where: str, flag: str = "--max-new-tokens") -> None:
    """A decoding length past the model's context would generate until killed: refuse it before any generation.
    `context`: the model's max_position_embeddings (None when its config has none: nothing to check)."""
    if max_new_tokens is not None and isinstance(context, int) and max_new_tokens >= context:
        raise UserError(f"{flag} {max_new_tokens} does not fit the context of {where} ({context} tokens, prompt "
                        f"included); use at most {context - 1}")


def evaluate(spec: str, benches: list[str], output_dir: str | Path, *, utility: bool = False, limit: int | None = None,
             sample: int | None = None, seed: int = 0, max_new_tokens: int = 128, batch_size: int = 16,
             refusal_list: str = "gcg", data_dir: str | None = None, prompt_field: str | None = None,
             category_field: str | None = None, utility_data: str | None = None, rouge_limit: int = 50,
             heldout_from: TrainConfig | None = None, show_progress: bool = True, judge2=None,
             backend: str = "hf", allow_pickle: bool = False, report_to: str = "none", tracker=None,
             chat_template: str | None = None, **bench_args) -> dict:
    """`report_to`: trackers for the metrics; `tracker` (a trackers.TrackerRun) where they go, by default the run
    dir's trackers (the training run's MLflow run gets them) or <output_dir>/trackers for a plain model.
    `bench_args`: the bench kinds' own settings (`--bench-arg KEY=VALUE`: detox's samples, top_p, steer_alpha and
    scorer, ...), each validated by the kind that takes it; None means the kind's default."""
    out = Path(output_dir)
    check_eval_settings(out, limit=limit, sample=sample, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    bench_args = {k: v for k, v in bench_args.items() if v is not None}
    backend = pick_backend(backend)
    benches, panels = expand_benches(benches)  # --bench panel[:choose|:check]: a suite's sets, then its numbers
    loaded = [load_bench(b, data_dir, prompt_field, category_field, limit, sample, seed) for b in benches]
    kind_settings = bench_settings([b.kind for b in loaded], bench_args)
    # the keyword judge only where a kind is scored by it: a toxicity or dialogue eval needs no refusal list
    judge = keyword_judge(refusal_list, data_dir) if any(BENCH_KINDS.lookup(b.kind).needs_judge for b in loaded) else None
    trackers = eval_trackers(report_to, spec, out, tracker, {"judge": judge and judge.name, "decoding": "greedy",
                                                              "max_new_tokens": max_new_tokens, "limit": limit,
                                                              "sample": sample, "second_judge": judge2 and judge2.name})
    heldout, heldout_cfg, rouge = None, None, None
    if utility:
        heldout, heldout_cfg = utility_split(spec, utility_data, data_dir, seed, heldout_from)
        rouge = rouge_set(data_dir, rouge_limit)
    method, base_model = run_method(spec)
    context = {"seed": seed, "method": method, "reference": base_model, "data_dir": data_dir, "cache": {}}
    settings = {"benches": benches, "panels": panels, "limit": limit, "sample": sample, "seed": seed, "max_new_tokens": max_new_tokens,
                "batch_size": batch_size, "decoding": "greedy", "judge": judge and judge.name, "backend": backend,
                "second_judge": None if judge2 is None else judge2.name, "bench_args": kind_settings}
    if heldout_cfg:
        settings["heldout"] = {"data": heldout_cfg.data, "heldout_size": heldout_cfg.heldout_size, "seed": heldout_cfg.seed,
                               "split_seed": heldout_cfg.split_seed}
    results: dict = {"settings": settings, "models": {}}
    generations: list[dict] = []
    device, dtype = models.eval_placement()
    settings["dtype"] = str(dtype).removeprefix("torch.")
    for label, source in model_variants(spec).items():
        model, tok, _ = methods.load_model_folder(source, dtype=dtype, allow_pickle=allow_pickle, chat_template=chat_template)
        model.to(device)
        check_max_new_tokens(max_new_tokens, getattr(getattr(model, "config", None), "max_position_embeddings", None), source)
        generator = VLLMBackend(models.resolve(source), tok, show_progress) if backend == "vllm" else None
        try:
            entry, rows = evaluate_model(model, tok, label, loaded, judge, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                         heldout=heldout, max_seq_len=heldout_cfg.max_seq_len if heldout_cfg else 256,
                                         rouge=rouge, show_progress=show_progress, judge2=judge2, generator=generator,
                                         context=context, settings=kind_settings)
        finally:
            if generator is not None:
                generator.close()
        # each suite once, by the first spec that named it (panel:choose and panel:check share one summary); the
        # loop variable must not be `spec`, the model evaluated
        for suite_spec in {suite_of(p): p for p in reversed(panels)}.values():
            entry |= suite_of(suite_spec).summarize(suite_spec, entry["benchmarks"], rows, seed, judge2)
        results["models"][label] = {"model": source, **entry}
        generations += rows
        del model
    atomic.write_json(out / "eval.json", results)
    atomic.write_jsonl(out / "generations.jsonl", generations)
    for bench in loaded:  # a bar chart per category, where the bench has categories (HEx-PHI, JBB)
        by_model = {label: e["benchmarks"][bench.name].get("by_category") for label, e in results["models"].items()}
        if bench.kind in ("harmful", "over-refusal") and any(by_model.values()):
            from .plots import category_png, write_png

            write_png(out / f"categories_{bench.name}.png", category_png(by_model, bench.name))
    if is_run_dir(Path(spec)):
        model_card.write(spec, results)  # the kept model's results, into the run's model/README.md
    if trackers:
        from .trackers import report_once

        summary = Path(spec) / "train_summary.json"  # the run's last step: the eval sits at the end of its training curves
        step = json.loads(summary.read_text()).get("steps", 0) if is_run_dir(Path(spec)) and summary.is_file() else 0
        report_once(trackers, eval_scalars(results), step)
    return results


def eval_trackers(report_to: str, spec: str, out: Path, tracker, settings: dict) -> list:
    """The trackers of --report-to, checked before any generation; a run dir's eval joins its training run."""
    from .config import check_report_to
    from .trackers import TRACKERS_DIR, TrackerRun, make_trackers

    try:
        report_to = check_report_to(report_to)
    except ValueError as e:
        raise UserError(f"--report-to: {e}") from None
    run = is_run_dir(Path(spec))
    where = tracker or (TrackerRun(Path(spec) / TRACKERS_DIR, Path(spec).resolve().name) if run
                        else TrackerRun(out / TRACKERS_DIR, out.resolve().name))
    tags = {f"safebasin.eval.{k}": v for k, v in settings.items() if v is not None}
    return make_trackers(report_to, where, resume=run, tags=tags)


def eval_scalars(results: dict) -> dict:
    """eval/<model>/<bench>/<metric> for every number of a bench (a second judge's under its own name) and
    eval/<model>/utility/<metric>; per-category numbers stay in eval.json. Names from data are reduced to the
    characters trackers accept."""
    def clean(name) -> str:
        return re.sub(r"[^\w.\- /]+", "_", str(name))

    values = {}
    for label, entry in results["models"].items():
        for bench, b in entry["benchmarks"].items():
            for key, value in b.items():
                if isinstance(value, dict) and key != "by_category":
                    values |= {f"eval/{label}/{clean(bench)}/{key}/{k}": v for k, v in value.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)}
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[f"eval/{label}/{clean(bench)}/{key}"] = value
        values |= {f"eval/{label}/utility/{k}": v for k, v in (entry.get("utility") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return values
