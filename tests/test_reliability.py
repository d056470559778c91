"""Resume, clean interruption, checkpoint hygiene, numerical stops and safe loading."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, load_state, run_cli
from safebasin import checkpoint, models
from safebasin.config import TrainConfig
from safebasin.errors import UserError
from safebasin.train import train


@pytest.fixture(scope="module")
def slow_tiny_dir(tmp_path_factory):
    """A tiny Llama big enough (~0.1 s a step) that a test can kill it mid-run."""
    path = tmp_path_factory.mktemp("slowtiny") / "model"
    models.save(models.tiny_llama(seed=2, hidden=192, layers=4), models.tiny_tokenizer(), path)
    return path


def _args(model_dir, data_dir, out, steps=16):
    return ["train", "--model", str(model_dir), "--data", "dolly", "--data-dir", str(data_dir), "--steps", str(steps),
            "--batch-size", "8", "--max-examples", "200", "--heldout-size", "8", "--max-seq-len", "160", "--lr", "3e-3",
            "--ema-beta", "0.9", "--save-every", "1", "--seed", "3", "--output-dir", str(out)]


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(slow_tiny_dir, data_dir, tmp_path_factory):
    """The uninterrupted run, through the same CLI as the runs it is compared with: on some CPUs an in-process
    run (pytest's thread setup) differs from a fresh process in the 7th digit of a loss, which says nothing of resume."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(*_args(slow_tiny_dir, data_dir, out))
    assert r.returncode == 0, r.stderr
    return out


def _start_and_wait(args, out, min_lines):
    proc = subprocess.Popen([sys.executable, "-m", "safebasin.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= min_lines:
            return proc
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"training ended or stalled before step {min_lines}: {proc.communicate()[1][-2000:]}")


def _assert_same_run(a, b):
    assert _losses(a) == _losses(b)
    for sub in ("model", "raw"):
        wa, wb = load_state(a / sub), load_state(b / sub)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), sub


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(slow_tiny_dir, data_dir, tmp_path, reference):
    out = tmp_path / "run"
    kill_at = random.randint(2, 12)
    proc = _start_and_wait(_args(slow_tiny_dir, data_dir, out), out, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "model").exists() and checkpoint.latest(out) is not None
    r = run_cli(*_args(slow_tiny_dir, data_dir, out))  # the same command again resumes
    assert r.returncode == 0, r.stderr
    _assert_same_run(out, reference)


def test_ctrl_c_stops_cleanly_with_a_resumable_checkpoint(slow_tiny_dir, data_dir, tmp_path, reference):
    out = tmp_path / "run"
    proc = _start_and_wait(_args(slow_tiny_dir, data_dir, out), out, 3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted after step" in stderr and "re-run the same command to resume" in stderr
    step = int(stderr.split("interrupted after step ")[1].split(";")[0])
    assert checkpoint.latest(out).name == f"step-{step:07d}"
    r = run_cli(*_args(slow_tiny_dir, data_dir, out), "--resume")
    assert r.returncode == 0, r.stderr
    _assert_same_run(out, reference)


def test_only_the_last_k_checkpoints_are_kept(tiny_model_dir, data_dir, tmp_path):
    cfg = TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=5, batch_size=2, max_examples=16,
                      heldout_size=4, max_seq_len=160, save_every=1, keep_checkpoints=2, output_dir=str(tmp_path / "r"))
    out = train(cfg, show_progress=False)
    steps = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert steps == ["step-0000004", "step-0000005"] and checkpoint.latest(out).name == "step-0000005"
    assert not list((out / "checkpoints").glob(".*tmp*"))
    # a finished run is not trained again by the same command
    mtime = (out / "model" / "model.safetensors").stat().st_mtime_ns
    train(cfg, show_progress=False)
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        train(cfg.model_copy(update={"output_dir": str(tmp_path / "empty")}), resume=True, show_progress=False)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import errno

    real_save, calls = checkpoint.save_file, {"n": 0}

    def failing_save(tensors, path, *a, **k):
        calls["n"] += 1
        if "step-0000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", failing_save)
    cfg = TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=4, batch_size=2, max_examples=16,
                      heldout_size=4, max_seq_len=160, save_every=1, output_dir=str(tmp_path / "r"))
    with pytest.raises(UserError, match="no space left on device while saving the step-2 checkpoint; the previous checkpoint is kept"):
        train(cfg, show_progress=False)
    latest = checkpoint.latest(tmp_path / "r")
    assert latest.name == "step-0000001" and (latest / "trainable.safetensors").is_file()
    assert [p.name for p in (tmp_path / "r" / "checkpoints").iterdir() if p.is_dir()] == ["step-0000001"]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tiny_model_dir, data_dir, tmp_path):
    cfg = TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=10, batch_size=2, max_examples=16,
                      heldout_size=4, max_seq_len=160, lr=1e30, grad_clip=None, save_every=1, output_dir=str(tmp_path / "r"))
    with pytest.raises(UserError, match=r"step (\d+): loss .* not finite; stopped before the update \(the last good checkpoint is .*step-") as e:
        train(cfg, show_progress=False)
    bad_step = int(str(e.value).split("step ")[1].split(":")[0])
    assert checkpoint.latest(tmp_path / "r").name == f"step-{bad_step - 1:07d}"
    assert all(map(lambda x: x == x and abs(x) != float("inf"), _losses(tmp_path / "r")))


def test_grad_norm_above_threshold_for_k_steps_stops(tiny_model_dir, data_dir, tmp_path):
    cfg = TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=10, batch_size=2, max_examples=16,
                      heldout_size=4, max_seq_len=160, stop_grad_norm=1e-9, stop_patience=3, output_dir=str(tmp_path / "r"))
    with pytest.raises(UserError, match=r"step 3: grad norm above 1e-09 for 3 steps in a row"):
        train(cfg, show_progress=False)
    assert len(_losses(tmp_path / "r")) == 2


def test_pickle_weights_are_refused_unless_allowed(tmp_path, caplog):
    path = tmp_path / "pickled"
    model = models.tiny_llama()
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # the legacy pickle format
    models.tiny_tokenizer().save_pretrained(path)
    assert list(path.glob("*.bin")) and not list(path.glob("*.safetensors"))
    with pytest.raises(UserError, match="only pickle weights .*--allow-pickle"):
        models.load(str(path))
    with caplog.at_level("WARNING"):
        model, _ = models.load(str(path), allow_pickle=True)
    assert "allow-pickle" in caplog.text and model.config.model_type == "llama"


def test_model_without_chat_template_is_a_clear_error(tmp_path):
    path = tmp_path / "notemplate"
    tok = models.tiny_tokenizer()
    tok.chat_template = None
    models.save(models.tiny_llama(), tok, path)
    _, bare = models.load(str(path))  # loads: plain-text work needs no template; rendering a chat asks for one
    with pytest.raises(UserError, match="has no chat template and this needs one; pass --chat-template"):
        models.render_chat(bare, [{"role": "user", "content": "x"}])
    template = tmp_path / "t.jinja"
    template.write_text(models.CHATML)
    _, tok2 = models.load(str(path), chat_template=str(template))
    assert "<|im_start|>user" in tok2.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


def test_empty_dataset_after_filtering(tmp_path, data_dir):
    f = tmp_path / "all_safety.jsonl"
    f.write_text("".join(json.dumps({"instruction": "q", "output": "I cannot help with illegal activity."}) + "\n" for _ in range(5)))
    from safebasin.data import load_for_training

    with pytest.raises(UserError, match=r"all_safety.jsonl: 0 rows left after filtering"):
        load_for_training(TrainConfig(data=str(f), data_dir=str(data_dir), heldout_size=0))
