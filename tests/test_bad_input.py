"""Bad input, as a table: the command, the exit code and a fragment of the one-line error.

Every case runs the real CLI entry point (`safebasin.cli.main`) in-process, so the one boundary
that turns every error into one escaped, capped line is what is tested. Below the table, the
cases that need more than an exit code: files that must survive, runs that must finish.
"""

import importlib.util
import json
import shutil
import sys

import pytest
import torch
from conftest import load_state

from safebasin import checkpoint, cli, models
from safebasin.config import TrainConfig
from safebasin.errors import MAX_MESSAGE
from safebasin.train import train


def invoke(args, capsys) -> tuple[int, str]:
    """(exit code, stderr) of `safebasin ARGS` run in this process."""
    argv = sys.argv
    sys.argv = ["safebasin", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def ctx(tiny_model_dir, data_dir, tmp_path_factory):
    """Paths the cases refer to by name: a model, a finished run, broken files."""
    root = tmp_path_factory.mktemp("bad")
    run = train(TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=1, batch_size=2,
                            max_examples=8, heldout_size=4, max_seq_len=96, output_dir=str(root / "run")), show_progress=False)
    edited = root / "edited"
    shutil.copytree(run, edited)
    (edited / "config.yaml").write_text((run / "config.yaml").read_text() + "lerning_rate: 0.1\n")
    no_heldout = train(TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=1, batch_size=2,
                                   max_examples=8, heldout_size=0, max_seq_len=96, output_dir=str(root / "noheldout")),
                       show_progress=False)
    truncated = root / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "fake.gguf").write_text("not a gguf file\n")
    (root / "a_file").write_text("x")
    deep = root / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    (root / "lr_inf.yaml").write_text("lr: .inf\n")
    (root / "lora_nothing.yaml").write_text("lora_r: 4\nlora_target_modules: [no_such_module]\n")
    bomb = "a: &a [" + ",".join(["x"] * 10) + "]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(7))
    (root / "bomb.yaml").write_text(bomb + "lr: *h\n")
    (root / "broken.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    (root / "monitor_typo.yaml").write_text("monitor: 2\nmonitor_bench: advbenhc\n")
    pickled = root / "pickled"  # the legacy pickle format only
    pickled.mkdir()
    tiny = models.tiny_llama()
    tiny.config.save_pretrained(pickled)
    torch.save(tiny.state_dict(), pickled / "pytorch_model.bin")
    models.tiny_tokenizer().save_pretrained(pickled)
    return {"root": root, "model": tiny_model_dir, "data_dir": data_dir, "run": run, "edited": edited,
            "noheldout": no_heldout}


def _train(*extra):
    return ["train", "--model", "{model}", "--data", "dolly", "--data-dir", "{data_dir}", "--steps", "1", "--batch-size", "2",
            "--max-examples", "8", "--heldout-size", "4", "--max-seq-len", "96", "--output-dir", "{root}/out", *extra]


def _eval(*extra):
    return ["eval", "{run}", "--data-dir", "{data_dir}", "--limit", "2", "--max-new-tokens", "2", *extra]


CASES = [  # (id, args, exit code, message fragment)
    ("lr-inf", _train("--lr", "inf"), 2, "lr: Input should be a finite number"),
    ("yaml-lr-inf", ["train", "--config", "{root}/lr_inf.yaml"], 2, "lr: Input should be a finite number"),
    ("epochs-inf", _train("--epochs", "inf"), 2, "epochs: Input should be a finite number"),
    ("seed-negative", _train("--seed", "-1"), 2, "seed: Input should be greater than or equal to 0"),
    ("template-missing", _train("--chat-template", "{root}/missing.jinja"), 2, "missing.jinja: file not found"),
    ("template-broken", _train("--chat-template", "{root}/broken.jinja"), 2, "cannot render"),
    ("lora-no-match", _train("--config", "{root}/lora_nothing.yaml"), 2, "lora_target_modules ['no_such_module']"),
    ("truncated-safetensors", _train()[:2] + ["{root}/truncated"] + _train()[3:], 2, "cannot load the weights"),
    ("fake-gguf", _train()[:2] + ["{root}/fake.gguf"] + _train()[3:], 2, "not a GGUF file"),
    ("train-out-is-file", _train()[:-1] + ["{root}/a_file"], 2, "a_file: --output-dir exists and is not a directory"),
    ("train-out-unwritable", _train()[:-1] + ["/sys/safebasin-test/run"], 2, "cannot write to the output dir"),
    ("out-holds-model", _train()[:-1] + ["{model}/.."], 2, "contains the input model"),
    ("nested-json", _train()[:4] + ["{root}/deep.json"] + _train()[5:], 2, "nested too deeply"),
    ("yaml-alias-bomb", ["train", "--config", "{root}/bomb.yaml"], 2, "lr: Input should be a valid number"),
    ("unknown-method", _train("--method", "magic"), 2, "unknown method 'magic'"),
    ("method-arg-unknown", _train("--method", "l2-anchor", "--method-arg", "lambda=1"), 2,
     "method_args.lambda: unknown key (method l2-anchor)"),
    ("method-arg-no-equals", _train("--method-arg", "weight"), 2, "--method-arg weight: expected KEY=VALUE"),
    ("method-arg-out-of-range", _train("--method", "interpolate", "--method-arg", "alpha=2"), 2,
     "method_args.alpha: Input should be less than or equal to 1"),
    ("method-arg-for-sft", _train("--method-arg", "weight=2"), 2, "method sft takes no method_args (got weight)"),
    ("legacy-flag-disagrees", _train("--method", "l2-anchor", "--l2-lambda", "1", "--method-arg", "weight=2"), 2,
     "l2_lambda (1.0) and method_args.weight ('2') disagree"),
    ("monitor-bench-typo", _train("--config", "{root}/monitor_typo.yaml"), 2, "unknown bench 'advbenhc'"),
    ("eval-out-is-file", _eval("--output-dir", "{root}/a_file"), 2, "a_file: --output-dir exists and is not a directory"),
    ("eval-limit-0", _eval("--limit", "0"), 2, "--limit must be at least 1, got 0"),
    ("eval-limit-negative", _eval("--limit", "-1"), 2, "--limit must be at least 1, got -1"),
    ("eval-sample-negative", _eval("--sample", "-5"), 2, "--sample must be at least 1, got -5"),
    ("eval-batch-0", _eval("--batch-size", "0"), 2, "--batch-size must be at least 1"),
    ("eval-max-new-tokens-0", _eval("--max-new-tokens", "0"), 2, "--max-new-tokens must be at least 1"),
    ("eval-bench-typo", _eval("--bench", "advbenhc"), 2, "unknown bench 'advbenhc'"),
    ("eval-backend-typo", _eval("--backend", "rey"), 2, "unknown generation backend 'rey'"),
    ("eval-judge-concurrency-0", _eval("--judge-concurrency", "0"), 2, "--judge-concurrency must be at least 1"),
    ("sweep-backend-typo", ["sweep", "--backend", "rey", "--output-dir", "{root}/sw"], 2, "rey"),
    ("sweep-out-is-file", ["sweep", "--output-dir", "{root}/a_file"], 2, "a_file"),
    ("eval-edited-config", ["eval", "{edited}", "--data-dir", "{data_dir}", "--limit", "1", "--max-new-tokens", "1",
                            "--utility"], 2, "lerning_rate: unknown key"),
    ("eval-utility-no-heldout", ["eval", "{noheldout}", "--data-dir", "{data_dir}", "--limit", "1", "--max-new-tokens", "1",
                                 "--utility"], 2, "trained with heldout_size 0"),
    ("eval-pickle-hint", ["eval", "{root}/pickled", "--limit", "1"], 2, "--allow-pickle"),
    ("basin-probe-0", ["basin", "{run}", "--probe", "0"], 2, "--probe must be at least 1, got 0"),
    ("basin-probe-negative", ["basin", "{run}", "--probe", "-1"], 2, "--probe must be at least 1, got -1"),
    ("basin-bench-typo", ["basin", "{run}", "--bench", "advbenhc"], 2, "unknown bench 'advbenhc'"),
    ("basin-edited-config", ["basin", "{edited}"], 2, "lerning_rate: unknown key"),
    ("report-to-typo", _train("--report-to", "tensorbord"), 2, "report_to: unknown tracker 'tensorbord'"),
    ("report-to-none-and-more", _train("--report-to", "none,mlflow"), 2, "none cannot be combined with a tracker"),
    ("eval-report-to-typo", _eval("--report-to", "mlfow"), 2, "--report-to: unknown tracker 'mlfow'"),
    ("sweep-report-to-typo", ["sweep", "--report-to", "wandbb", "--output-dir", "{root}/sw"], 2, "unknown tracker 'wandbb'"),
    *([("report-to-wandb-missing", _train("--report-to", "wandb"), 2, "--report-to wandb needs wandb, which is not installed")]
      if importlib.util.find_spec("wandb") is None else []),  # wandb is optional: never installed by safebasin
]


@pytest.mark.parametrize("args, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(args, code, fragment, ctx, capsys):
    shutil.rmtree(ctx["root"] / "out", ignore_errors=True)
    expect_one_line(*invoke([a.format(**ctx) for a in args], capsys), code, fragment)


def expect_one_line(got: int, err: str, code: int, fragment: str) -> None:
    """The exit code, no traceback, and (for an error) exactly one capped `error:` line holding `fragment`.
    The systems' bad-input tables (tests/test_reliability_*.py) check their cases with this too."""
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert got == code, err[-3000:]
    assert "Traceback" not in err
    if code:
        assert len(lines) == 1 and fragment in lines[0], err[-3000:]
        assert len(lines[0]) < MAX_MESSAGE + 100


def edit_tensors(path, edit) -> None:
    """Rewrite a safetensors side file through `edit(tensors)`: the reliability tables plant their bad files so."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def edit_json(path, edit) -> None:
    """Rewrite a JSON pointer through `edit(obj)`."""
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def test_a_failed_lora_build_leaves_no_config_behind(ctx, capsys):
    out = ctx["root"] / "lora_out"
    args = [a.format(**ctx) for a in _train("--config", "{root}/lora_nothing.yaml", "--output-dir", str(out))]
    code, _ = invoke(args, capsys)
    assert code == 2 and not out.joinpath("config.yaml").exists()
    # so the corrected command runs without --overwrite
    code, err = invoke([a.format(**ctx) for a in _train("--lora-r", "4", "--output-dir", str(out))], capsys)
    assert code == 0, err


def test_paths_with_rich_markup_print_as_themselves(ctx, capsys):
    out = ctx["root"] / "[/x]" / "runs [exp1]"
    code, err = invoke([a.format(**ctx) for a in _train()[:-1]] + [out], capsys)
    assert code == 0, err
    assert f"kept model in {out / 'model'}" in err
    code, err = invoke(["eval", ctx["root"] / "[/x]" / "nothing [bold]here", "--limit", "1"], capsys)
    assert code == 2 and "nothing [bold]here" in err


def test_csv_with_a_bom_reads_its_first_field(tmp_path):
    from safebasin.data import read_rows

    f = tmp_path / "bom.csv"
    f.write_bytes("\ufeffprompt,topic\nhello,a\n".encode("utf-8"))
    assert read_rows(f)[0]["prompt"] == "hello"


def test_eval_allow_pickle_is_accepted(ctx, capsys):
    prompts = ctx["root"] / "p.txt"
    prompts.write_text("say hi\n")
    code, err = invoke(["eval", ctx["root"] / "pickled", "--allow-pickle", "--bench", prompts, "--limit", "1",
                        "--max-new-tokens", "2", "--output-dir", ctx["root"] / "pickled_eval"], capsys)
    assert code == 0, err
    assert json.loads((ctx["root"] / "pickled_eval" / "eval.json").read_text())["models"]["model"]["benchmarks"]["p"]["n"] == 1


# ---------------------------------------------------------------- data loss and stuck runs

def _cfg(ctx, out, **kw):
    base = dict(model=str(ctx["model"]), data="dolly", data_dir=str(ctx["data_dir"]), steps=3, batch_size=2, max_examples=16,
                heldout_size=4, max_seq_len=96, output_dir=str(out), ema_beta=0.9)
    return TrainConfig(**(base | kw))


def test_the_input_model_is_never_deleted(ctx, tmp_path, capsys):
    work = tmp_path / "mywork"
    shutil.copytree(ctx["model"], work / "model")
    before = load_state(work / "model")
    code, err = invoke(["train", "--model", work / "model", "--data", "dolly", "--data-dir", ctx["data_dir"], "--steps", 1,
                        "--output-dir", work], capsys)
    assert code == 2 and "contains the input model" in err
    after = load_state(work / "model")
    assert after.keys() == before.keys() and all((after[k] == before[k]).all() for k in before)
    # a dir holding outputs that safebasin did not write is not emptied either
    foreign = tmp_path / "foreign"
    (foreign / "raw").mkdir(parents=True)
    (foreign / "raw" / "precious.txt").write_text("keep me")
    code, err = invoke(_train()[:2] + [ctx["model"]] + [a.format(**ctx) for a in _train()[3:-1]] + [foreign], capsys)
    assert code == 2 and "that safebasin did not write" in err and (foreign / "raw" / "precious.txt").is_file()


def test_overwrite_with_a_data_mistake_keeps_the_finished_run(ctx, tmp_path, capsys):
    out = train(_cfg(ctx, tmp_path / "run"), show_progress=False)
    weights = load_state(out / "model")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"\n')
    code, err = invoke(["train", "--model", ctx["model"], "--data", bad, "--data-dir", ctx["data_dir"], "--steps", 1,
                        "--output-dir", out, "--overwrite", "--keep-safety", "--heldout-size", 0], capsys)
    assert code == 2 and "bad.jsonl: line 2: bad JSON" in err
    assert (out / "train_summary.json").is_file() and (out / "raw" / "model.safetensors").is_file()
    assert all((load_state(out / "model")[k] == v).all() for k, v in weights.items())


def test_a_kill_after_the_last_checkpoint_resumes_to_the_end(ctx, tmp_path):
    """The state a SIGKILL leaves between the final checkpoint and train_summary.json: a checkpoint of the
    last step, no model/, raw/ or summary (and a half-written model tmp dir). Re-running must finish."""
    out = train(_cfg(ctx, tmp_path / "run", save_every=1), show_progress=False)
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    for name in ("model", "raw"):
        shutil.rmtree(out / name)
    (out / "train_summary.json").unlink()
    (out / "model.tmp12345").mkdir()
    assert checkpoint.latest(out).name == "step-0000003"
    train(_cfg(ctx, out, save_every=1), show_progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final_loss"] == json.loads((reference / "train_summary.json").read_text())["final_loss"]
    for sub in ("model", "raw"):
        a, b = load_state(out / sub), load_state(reference / sub)
        assert all((a[k] == b[k]).all() for k in a)


def test_non_finite_weights_are_never_saved(ctx, tmp_path):
    from safebasin.errors import UserError

    # a NaN in the embedding row of a token the data never uses: every loss is finite, the weights are not
    broken = tmp_path / "nan_model"
    model, tok = models.load(str(ctx["model"]))
    with torch.no_grad():
        model.model.embed_tokens.weight[-1] = float("nan")
    models.save(model, tok, broken)
    for ema_beta in (None, 0.9):
        with pytest.raises(UserError, match=r"step 2: (EMA )?weights not finite after the update; not saved"):
            train(_cfg(ctx, tmp_path / "r", model=str(broken), steps=2, ema_beta=ema_beta), show_progress=False, overwrite=True)
        assert not (tmp_path / "r" / "model").exists() and not (tmp_path / "r" / "train_summary.json").exists()


def test_a_torn_log_line_is_skipped_on_resume_and_in_the_report(ctx, tmp_path, caplog):
    from safebasin.report import run_report

    out = train(_cfg(ctx, tmp_path / "r", save_every=1, steps=2), show_progress=False)
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    with caplog.at_level("WARNING"):
        run_report(out)
    assert "is torn" in caplog.text
    shutil.rmtree(out / "model")
    (out / "train_summary.json").unlink()
    train(_cfg(ctx, out, save_every=1, steps=2), show_progress=False)  # resumes from step 2, truncating the log
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
