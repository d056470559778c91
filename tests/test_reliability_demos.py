"""The demos' output dir (issue 33): a demo writes only into a dir it owns, trains only into arm dirs it made,
refuses reserved and duplicate arm names, and a finished run of any method is recognised as finished."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import load_state
from safebasin import scenario
from safebasin.config import TrainConfig
from safebasin.errors import UserError
from safebasin.models import start_model
from safebasin.train import MARKER, START_FILE, train
from test_bad_input import expect_one_line, invoke

SCENARIOS = ["safety", "detox", "dialogue", "kg"]


def _demo(scenario_name, out, *extra):
    return ["demo", scenario_name, "--quick", "--output-dir", str(out), *extra]


def _one_error(code, err, fragment):
    expect_one_line(code, err, 2, fragment)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_demo_never_writes_into_a_folder_of_the_users_own_files(name, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    files = {"summary.json": '{"mine": 1}\n', "report.html": "<p>my report</p>", "generations.jsonl": "{}\n",
             "demo_config.yaml": "mine: true\n", "tradeoff.png": "not really a png"}
    for f, text in files.items():
        (out / f).write_text(text)
    code, err = invoke(_demo(name, out), capsys)
    _one_error(code, err, "not made by `safebasin demo`")
    assert {p.name: p.read_text() for p in out.iterdir()} == files  # nothing written, nothing replaced


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_demo_output_dir_that_is_a_file_is_one_line(name, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, err = invoke(_demo(name, tmp_path / "f"), capsys)
    _one_error(code, err, "--output-dir exists and is not a directory")


def test_another_scenarios_demo_dir_is_refused(tmp_path, capsys):
    scenario.DemoDir(tmp_path / "d", "kg", {})
    code, err = invoke(_demo("detox", tmp_path / "d"), capsys)
    _one_error(code, err, "holds the outputs of `safebasin demo kg`")


@pytest.mark.parametrize("name, config, fragment", [
    ("detox", {"fluent_arms": {"base": {"ewc_weight": 5.0}}}, "arm name 'base' is reserved"),
    ("detox", {"fluent_arms": {"adlm": {"ewc_weight": 5.0}}}, "arm name 'adlm' is reserved"),
    ("detox", {"ablations": False, "fluent_arms": {"adlm-no-ewc": {}}}, "arm name 'adlm-no-ewc' is reserved"),
    ("kg", {"arms": ["SURGE", "SURGE"]}, "arms 'SURGE' and 'SURGE' have the same name"),
    ("dialogue", {"baselines": ["response-ft", "response-ft"]}, "have the same name"),
])
def test_reserved_and_duplicate_arm_names_are_config_errors(name, config, fragment, tmp_path, capsys):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(config))
    code, err = invoke(_demo(name, tmp_path / "out", "--config", cfg), capsys)
    _one_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def _arm_cfg(tiny_model_dir, data_dir, out, **kw):
    return TrainConfig(**{"model": str(tiny_model_dir), "data": "dolly", "data_dir": str(data_dir), "steps": 1,
                          "batch_size": 2, "max_examples": 8, "heldout_size": 4, "max_seq_len": 64,
                          "output_dir": str(out), **kw})


def test_a_demo_never_replaces_a_run_it_did_not_make(tiny_model_dir, data_dir, tmp_path):
    """The user trained into OUT/adlm themselves; the demo in OUT must refuse (naming --overwrite), keep their run,
    and replace it only with --overwrite."""
    demo_dir = scenario.DemoDir(tmp_path / "OUT", "detox", {})
    users = train(_arm_cfg(tiny_model_dir, data_dir, tmp_path / "OUT" / "adlm", lr=1e-3), show_progress=False)
    before = load_state(users / "model")
    again = scenario.DemoDir(tmp_path / "OUT", "detox", {})
    with pytest.raises(UserError, match="--overwrite"):
        again.claim_arms([tmp_path / "OUT" / "adlm"])
    assert all((load_state(users / "model")[k] == v).all() for k, v in before.items())
    assert json.loads((tmp_path / "OUT" / scenario.MARKER).read_text())["arms"] == []
    del demo_dir
    forced = scenario.DemoDir(tmp_path / "OUT", "detox", {}, overwrite=True)
    forced.claim_arms([tmp_path / "OUT" / "adlm"])
    forced.train_arm(_arm_cfg(tiny_model_dir, data_dir, tmp_path / "OUT" / "adlm", lr=5e-4), show_progress=False)
    assert any(not (load_state(users / "model")[k] == v).all() for k, v in before.items())


def test_a_demo_keeps_its_own_finished_arm_and_replaces_its_own_stale_one(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "OUT"
    demo_dir = scenario.DemoDir(out, "dialogue", {})
    demo_dir.claim_arms([out / "sft"])
    demo_dir.train_arm(_arm_cfg(tiny_model_dir, data_dir, out / "sft"), show_progress=False)
    mtime = (out / "sft" / "model" / "model.safetensors").stat().st_mtime_ns
    resumed = scenario.DemoDir(out, "dialogue", {})  # a re-run: the marker says the arm is the demo's own
    resumed.claim_arms([out / "sft"])
    resumed.train_arm(_arm_cfg(tiny_model_dir, data_dir, out / "sft"), show_progress=False)
    assert (out / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == mtime  # same config: kept
    resumed.train_arm(_arm_cfg(tiny_model_dir, data_dir, out / "sft", lr=1e-3), show_progress=False)
    assert (out / "sft" / "model" / "model.safetensors").stat().st_mtime_ns != mtime  # its own stale arm: replaced


def test_finish_writes_the_summary_last(tmp_path):
    demo_dir = scenario.DemoDir(tmp_path / "d", "kg", {"a": 1})
    seen = []

    def write_report(out, summary, generations):
        seen.append(((out / "generations.jsonl").is_file(), (out / "summary.json").is_file()))
        (out / "report.html").write_text("ok")

    demo_dir.generations = [{"g": 1}]
    demo_dir.finish({"x": 1}, write_report)
    assert seen == [(True, False)]
    assert json.loads((tmp_path / "d" / "summary.json").read_text()) == {"x": 1}
    assert yaml.safe_load((tmp_path / "d" / "demo_config.yaml").read_text()) == {"a": 1}


def test_a_finished_adlm_run_is_done_and_not_retrained(tiny_model_dir, data_dir, tmp_path):
    """Its model/ holds a pointer and a block, not config.json: the method's folder marker counts as finished."""
    cfg = TrainConfig(model=str(tiny_model_dir), data="jigsaw", data_dir=str(data_dir), method="adlm", steps=1,
                      batch_size=2, max_examples=16, heldout_size=4, max_seq_len=32, lr=1e-3,
                      output_dir=str(tmp_path / "adlm"), method_args={"fisher_batches": 1})
    run = train(cfg, show_progress=False)
    card = (run / "model" / "README.md").read_text()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (run / "model").iterdir()}
    train(cfg, show_progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "model").iterdir()} == mtimes
    assert (run / "model" / "README.md").read_text() == card


def test_a_kill_during_the_final_save_leaves_no_temp_folder_behind(tiny_model_dir, data_dir, tmp_path):
    cfg = _arm_cfg(tiny_model_dir, data_dir, tmp_path / "run")
    run = train(cfg, show_progress=False)
    (run / ".model.k1ll3d.tmp").mkdir()
    (run / ".model.k1ll3d.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".train_summary.json.abc.tmp").write_text("{")
    (run / ".users-own.tmp").mkdir()  # not a name safebasin writes: kept
    train(cfg, show_progress=False)  # done: nothing retrained, the debris swept
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == sorted([MARKER, ".users-own.tmp"])


def test_a_run_dir_finds_its_start_model_from_any_directory(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """config.yaml keeps the model as written (here relative); start_model.json pins where it led."""
    monkeypatch.chdir(tiny_model_dir.parent)
    run = train(_arm_cfg(tiny_model_dir.name, data_dir, tmp_path / "run"), show_progress=False)
    monkeypatch.chdir(tmp_path)
    assert start_model(run) == str(tiny_model_dir.resolve())
    weights = tiny_model_dir / "model.safetensors"
    saved = json.loads((run / START_FILE).read_text())
    saved["files"]["model.safetensors"]["sha256"] = "0" * 16  # as if the folder now held other weights
    (run / START_FILE).write_text(json.dumps(saved))
    with pytest.raises(UserError, match="no longer holds the pinned weights"):
        start_model(run)
    assert weights.is_file()


def test_a_demo_dir_from_before_the_marker_is_still_the_demos_own(tiny_model_dir, data_dir, tmp_path):
    """A demo_config.yaml with exactly the scenario's keys: the dir and its run dirs were safebasin's."""
    out = tmp_path / "old"
    run = train(_arm_cfg(tiny_model_dir, data_dir, out / "careful"), show_progress=False)
    (out / "demo_config.yaml").write_text(yaml.safe_dump({"a": 1, "b": 2}))
    demo_dir = scenario.DemoDir(out, "safety", {"a": 1, "b": 3})
    assert demo_dir.marker["arms"] == ["careful"] and run.is_dir()
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "demo_config.yaml").write_text(yaml.safe_dump({"a": 1}))
    with pytest.raises(UserError, match="not made by"):
        scenario.DemoDir(tmp_path / "users", "safety", {"a": 1, "b": 3})


def test_a_finished_summary_names_no_folder_of_this_machine(tmp_path, data_dir, monkeypatch):
    """summary.json reads the same wherever it is copied: the data dir, the cache, the demo dir and the home dir
    are written as $SAFEBASIN_DATA_DIR, $SAFEBASIN_CACHE, a relative path and ~."""
    monkeypatch.setenv("SAFEBASIN_CACHE", str(tmp_path / "cache"))
    demo_dir = scenario.DemoDir(tmp_path / "d", "kg", {"data_dir": str(data_dir)})
    home = str(Path.home())
    summary = {"source": f"{data_dir.resolve()}/advbench/harmful_behaviors.csv",
               "configs": {"a": {"model": f"{tmp_path / 'cache'}/aligned/abc/run/model", "output_dir": str(tmp_path / "d" / "arm")}},
               "note": f"trained in {tmp_path / 'd'}", "elsewhere": f"{home}/models/x", "plain": "a/b", "n": 3,
               "beside": f"{tmp_path / 'd'}2/arm"}  # another folder whose name begins with the demo dir's
    demo_dir.finish(summary, lambda out, s, g: None)
    saved = json.loads((tmp_path / "d" / "summary.json").read_text())
    portable_beside = f"{tmp_path / 'd'}2/arm".replace(home, "~", 1) if str(tmp_path).startswith(home) else f"{tmp_path / 'd'}2/arm"
    assert saved == {"source": "$SAFEBASIN_DATA_DIR/advbench/harmful_behaviors.csv",
                     "configs": {"a": {"model": "$SAFEBASIN_CACHE/aligned/abc/run/model", "output_dir": "arm"}},
                     "note": "trained in .", "elsewhere": "~/models/x", "plain": "a/b", "n": 3,
                     "beside": portable_beside}


def test_the_demos_aligned_folder_is_real_and_survives_a_copy(tmp_path):
    """aligned/ holds the cached run's files (not a pointer into the cache): a copy of the demo dir keeps them,
    an earlier version's symlink is replaced, and a second call swaps in the new files with nothing left over."""
    import shutil

    from safebasin.safety.demo import mirror

    cache = tmp_path / "cache" / "run"
    (cache / "model").mkdir(parents=True)
    (cache / "model" / "config.json").write_text('{"a": 1}')
    (cache / "config.yaml").write_text("lr: 1\n")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "aligned").symlink_to(cache, target_is_directory=True)  # what the previous version left
    mirror(cache, out / "aligned")
    assert not (out / "aligned").is_symlink()
    assert (out / "aligned" / "model" / "config.json").read_text() == '{"a": 1}'
    shutil.copytree(out, tmp_path / "copy", symlinks=True)
    shutil.rmtree(tmp_path / "cache")
    assert (tmp_path / "copy" / "aligned" / "config.yaml").read_text() == "lr: 1\n"
    newer = tmp_path / "newer"
    (newer / "model").mkdir(parents=True)
    (newer / "model" / "config.json").write_text('{"a": 2}')
    mirror(newer, out / "aligned")
    assert (out / "aligned" / "model" / "config.json").read_text() == '{"a": 2}'
    assert not (out / "aligned" / "config.yaml").exists()
    assert sorted(p.name for p in out.iterdir()) == ["aligned"]
