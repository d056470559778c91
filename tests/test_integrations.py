"""safebasin inside the trainers people already use: EMACallback and SafetyMonitorCallback on a real TRL
SFTTrainer and a real transformers Trainer (tiny model, CPU), and `safebasin train` outputs loaded by plain
transformers and peft."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                          TrainingArguments)
from trl import SFTConfig, SFTTrainer

from conftest import ROOT, load_state
from safebasin import models
from safebasin.integrations import EMACallback, SafetyMonitorCallback
from safebasin.integrations.transformers import EMA_FILE, MONITOR_FILE

ROWS = [{"text": f"Question {i}: what does the quick brown fox do? Answer: it jumps over the lazy dog, {i} times."}
        for i in range(16)]
COMMON = dict(per_device_train_batch_size=4, report_to=[], logging_steps=1, use_cpu=True, seed=0, disable_tqdm=True)


def sft(model_dir, out, callbacks, steps, save_steps=0, lr=1e-2, peft_config=None) -> SFTTrainer:
    model, tok = models.load(str(model_dir))
    args = SFTConfig(output_dir=str(out), max_steps=steps, learning_rate=lr, max_length=64, save_strategy="steps" if save_steps else "no",
                     save_steps=save_steps or 1, **COMMON)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok,
                      callbacks=callbacks, peft_config=peft_config)


def live(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def generates(model, tok, n=5) -> torch.Tensor:
    """Greedy ids of n new tokens for one chat prompt (min_new_tokens: an early EOS of the random model cannot cut it)."""
    ids = tok(tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False),
              return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids["input_ids"].shape[1] + n)
    return out


class StopAt(TrainerCallback):
    """An interruption: the run ends after `step`, as a killed job's last checkpoint does."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


# ---------------------------------------------------------------- EMACallback on SFTTrainer

def test_beta_one_keeps_theta0_and_beta_zero_the_trained_weights(tiny_model_dir, tmp_path):
    init = load_state(tiny_model_dir)
    for beta in (1.0, 0.0):
        trainer = sft(tiny_model_dir, tmp_path / str(beta), [EMACallback(beta)], steps=3)
        trainer.train()
        kept, raw = load_state(tmp_path / str(beta) / "ema"), live(trainer)
        assert kept.keys() == init.keys()
        assert any(not torch.equal(raw[k], init[k]) for k in init)  # training did move the live weights
        expected = init if beta == 1.0 else raw
        assert all(torch.equal(kept[k], expected[k]) for k in init), beta


def test_one_step_at_beta_07_is_the_weighted_average_and_loads_with_transformers(tiny_model_dir, tmp_path):
    trainer = sft(tiny_model_dir, tmp_path / "run", [EMACallback(0.7)], steps=1)
    trainer.train()
    init, raw = load_state(tiny_model_dir), live(trainer)
    kept = load_state(tmp_path / "run" / "ema")
    for k in init:
        torch.testing.assert_close(kept[k], 0.7 * init[k] + 0.3 * raw[k], rtol=1e-5, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "ema")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "ema")
    assert all(torch.equal(model.state_dict()[k], kept[k]) for k in kept)
    generates(model, tok)


def test_resumed_run_gives_the_uninterrupted_ema_bit_for_bit(tiny_model_dir, tmp_path):
    full = sft(tiny_model_dir, tmp_path / "full", [EMACallback(0.7)], steps=4, save_steps=2)
    full.train()
    cut = sft(tiny_model_dir, tmp_path / "cut", [EMACallback(0.7), StopAt(2)], steps=4, save_steps=2)
    cut.train()
    assert cut.state.global_step == 2 and (tmp_path / "cut" / "checkpoint-2" / EMA_FILE).is_file()
    assert not (tmp_path / "cut" / "checkpoint-4").exists()
    resumed = sft(tiny_model_dir, tmp_path / "cut", [EMACallback(0.7)], steps=4, save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    a, b = load_state(tmp_path / "full" / "ema"), load_state(tmp_path / "cut" / "ema")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file

    fa, fb = (load_file(tmp_path / run / "checkpoint-4" / EMA_FILE) for run in ("full", "cut"))  # θ̄ itself, float32
    assert all(fa[k].dtype == torch.float32 and torch.equal(fa[k], fb[k]) for k in fa)
    # re-initialising θ̄ at the checkpoint's live weights would have given another θ̄: a checkpoint without it is refused
    (tmp_path / "cut" / "checkpoint-2" / EMA_FILE).unlink()
    again = sft(tiny_model_dir, tmp_path / "cut", [EMACallback(0.7)], steps=4, save_steps=2)
    with pytest.raises(FileNotFoundError, match=f"checkpoint-2/{EMA_FILE} is missing"):
        again.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))


def test_lora_ema_covers_the_adapters_and_saves_a_peft_folder(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    cb = EMACallback(0.7)
    trainer = sft(tiny_model_dir, tmp_path / "lora", [cb], steps=1, peft_config=lora)
    theta0 = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert [n for n, _ in cb.named] == list(theta0) and all("lora_" in n for n in theta0)  # only the adapters
    theta1 = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    folder = tmp_path / "lora" / "ema"
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()  # an adapter folder, as peft saves one
    base, tok = models.load(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, folder)
    params = dict(loaded.named_parameters())
    for n in theta0:
        torch.testing.assert_close(params[n], 0.7 * theta0[n] + 0.3 * theta1[n], rtol=1e-5, atol=1e-7)
    assert any(float(theta1[n].abs().max()) > 0 for n in theta1 if "lora_B" in n)  # the adapters did move
    plain = models.load(str(tiny_model_dir))[0]
    ids = generates(loaded, tok)
    assert not torch.equal(loaded(ids).logits, plain(ids).logits)  # the averaged adapter is applied


# ---------------------------------------------------------------- SafetyMonitorCallback on transformers.Trainer

def hf_trainer(model_dir, out, callbacks, steps, lr=1e-2, save_steps=0) -> Trainer:
    model, tok = models.load(str(model_dir))
    data = Dataset.from_list(ROWS).map(lambda r: tok(r["text"], truncation=True, max_length=64), remove_columns=["text"])
    args = TrainingArguments(output_dir=str(out), max_steps=steps, learning_rate=lr, save_strategy="steps" if save_steps else "no",
                             save_steps=save_steps or 1, **COMMON)
    return Trainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=callbacks,
                   data_collator=DataCollatorForLanguageModeling(tok, mlm=False))


def probes(trainer) -> list[dict]:
    return [r for r in trainer.state.log_history if "probe_harmful_live" in r]


MONITOR = dict(probe_prompts=4, max_new_tokens=4, budget=0)


def test_monitor_probes_at_the_planned_steps_into_the_trainer_log_and_resumes(tiny_model_dir, data_dir, tmp_path):
    trainer = hf_trainer(tiny_model_dir, tmp_path / "run", [EMACallback(0.7)], steps=4, save_steps=2)
    trainer.add_callback(SafetyMonitorCallback(trainer, probes=2, data_dir=str(data_dir), **MONITOR))
    trainer.train()
    rows = probes(trainer)
    assert [r["step"] for r in rows] == [0, 2, 4] and trainer.state.global_step == 4
    assert all(0 <= r[k] <= 1 for r in rows for k in ("probe_harmful_live", "probe_harmful_ema", "probe_harmful_kept"))
    assert rows[0]["dist_live"] == rows[0]["dist_ema"] == 0.0
    assert all(0 < r["dist_ema"] < r["dist_live"] for r in rows[1:])  # θ̄ lags the live weights, nearer θ0
    assert all(r["probe_harmful_kept"] == r["probe_harmful_ema"] for r in rows)  # with an EMA, θ̄ is the kept model
    assert [r["step"] for r in trainer.state.log_history if "loss" in r] == [1, 2, 3, 4]  # the Trainer's own logs stay
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / MONITOR_FILE).read_text())
    assert saved["probed"] == [0, 2] and saved["start"]["probe_harmful_live"] == rows[0]["probe_harmful_live"]

    # resumed at step 2: no new start probe, the same schedule, and the same numbers at step 4
    resumed = hf_trainer(tiny_model_dir, tmp_path / "run", [EMACallback(0.7)], steps=4, save_steps=2)
    resumed.add_callback(SafetyMonitorCallback(resumed, probes=2, data_dir=str(data_dir), **MONITOR))
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    after = probes(resumed)
    assert [r["step"] for r in after] == [0, 2, 4]  # log_history comes back from the checkpoint, then step 4 is added
    keys = ("probe_harmful_live", "probe_harmful_ema", "dist_live", "dist_ema")
    assert [after[-1][k] for k in keys] == [rows[-1][k] for k in keys]


def test_monitor_stop_rule_ends_training_at_the_first_probe_past_the_margin(tiny_model_dir, data_dir, tmp_path):
    from safebasin.evaluate import probe_prompts
    from safebasin.generate import HFBackend

    # a refusal list made of what the start model says: at step 0 it "refuses" every probe prompt
    model, tok = models.load(str(tiny_model_dir))
    _, prompts = probe_prompts("advbench", 4, 0, str(data_dir))
    start = HFBackend(model, tok, 8, show_progress=False).generate(prompts, 4)
    refusals = tmp_path / "start_phrases.json"
    refusals.write_text(json.dumps(sorted({r for r in start if r})))
    trainer = hf_trainer(tiny_model_dir, tmp_path / "run", [], steps=8, lr=0.05)
    monitor = SafetyMonitorCallback(trainer, probes=8, stop=0.2, refusal_list=str(refusals), data_dir=str(data_dir), **MONITOR)
    trainer.add_callback(monitor)
    trainer.train()
    rows = probes(trainer)
    margin = rows[0]["probe_harmful_kept"] + 0.2
    assert rows[0]["step"] == 0 and rows[0]["probe_harmful_kept"] <= 0.25  # an empty start response holds no phrase
    assert monitor.stopped_at == rows[-1]["step"] == trainer.state.global_step < 8
    assert rows[-1]["probe_harmful_kept"] > margin and rows[-1]["monitor_stopped"] == 1
    assert [r["step"] for r in rows] == list(range(rows[-1]["step"] + 1))  # probed every step up to the stop
    assert all(r["probe_harmful_kept"] <= margin and "monitor_stopped" not in r for r in rows[:-1])


def test_monitor_before_the_ema_callback_is_refused(tiny_model_dir, data_dir, tmp_path):
    trainer = hf_trainer(tiny_model_dir, tmp_path / "run", [], steps=1)
    trainer.add_callback(SafetyMonitorCallback(trainer, probes=1, data_dir=str(data_dir), **MONITOR))
    trainer.add_callback(EMACallback(0.9))
    with pytest.raises(ValueError, match="add the EMACallback before the SafetyMonitorCallback"):
        trainer.train()
    with pytest.raises(ValueError, match="beta must be in"):
        EMACallback(1.5)


# ---------------------------------------------------------------- `safebasin train` outputs load anywhere

def test_safebasin_train_outputs_load_with_plain_transformers_and_peft(tiny_model_dir, data_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from safebasin.train import train
    from test_train import _cfg

    full = train(_cfg(tiny_model_dir, data_dir, tmp_path / "ema", steps=1, ema_beta=0.7), show_progress=False)
    lora = train(_cfg(tiny_model_dir, data_dir, tmp_path / "lora", steps=2, method="lora", lr=1e-2), show_progress=False)
    init = load_state(tiny_model_dir)
    for out in (full, lora):
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        tok = AutoTokenizer.from_pretrained(out / "model")
        state = model.state_dict()
        assert state.keys() == init.keys()  # a plain model: no lora_ keys, nothing safebasin-specific
        assert any(not torch.equal(state[k], init[k]) for k in init)  # the trained weights, not the base's
        ids = generates(model, tok)
        own, _ = models.load(str(out))  # safebasin's own loader reads the same model from the run dir
        assert torch.equal(own(ids).logits, model(ids).logits)
    # the merged LoRA run is a base model for peft, e.g. to train another adapter on it: fresh adapters change nothing
    model = AutoModelForCausalLM.from_pretrained(lora / "model")
    ids = generates(model, tok)
    reference = model(ids).logits
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert torch.equal(peft_model(ids).logits, reference)
    moved = [k for k in init if not torch.equal(load_state(lora / "model")[k], init[k])]
    assert moved and all(k.endswith("proj.weight") for k in moved)  # LoRA merged into the targeted linears only


# ---------------------------------------------------------------- EMACallback under DDP

DDP_WORKER = '''
import sys
from pathlib import Path

from datasets import Dataset
from safetensors.torch import save_file
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from safebasin import models
from safebasin.integrations import EMACallback

model_dir, out, rows = sys.argv[1], Path(sys.argv[2]), [{"text": f"Question {i}: the quick brown fox."} for i in range(8)]
model, tok = models.load(model_dir)
data = Dataset.from_list(rows).map(lambda r: tok(r["text"]), remove_columns=["text"])
args = TrainingArguments(output_dir=str(out), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, report_to=[],
                         use_cpu=True, seed=0, disable_tqdm=True, save_strategy="steps", save_steps=1, ddp_backend="gloo")
cb = EMACallback(0.7)
trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[cb],
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
trainer.train()
assert args.world_size == 2 and type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
rank = args.process_index
save_file({n: s for (n, _), s in zip(cb.named, cb.ema.shadow)}, str(out / f"shadow{rank}.safetensors"))
save_file({n: p.detach().contiguous() for n, p in cb.named}, str(out / f"live{rank}.safetensors"))
'''


def test_ddp_two_processes_keep_the_same_ema_and_save_it_unwrapped(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    torchrun = shutil.which("torchrun", path=str(ROOT / ".venv" / "bin")) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    out = tmp_path / "out"
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", tmp_path / "worker.py", tiny_model_dir, out],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = load_file(out / "shadow0.safetensors"), load_file(out / "shadow1.safetensors")
    live0, live1 = load_file(out / "live0.safetensors"), load_file(out / "live1.safetensors")
    init, kept = load_state(tiny_model_dir), load_state(out / "ema")
    assert any(not torch.equal(live0[k], init[k]) for k in init)  # the step did move the weights
    assert s0.keys() == init.keys() == kept.keys()  # names of the unwrapped model: no DDP "module." prefix
    for k in init:
        assert torch.equal(s0[k], s1[k]) and torch.equal(live0[k], live1[k])  # every rank keeps the same θ̄
        assert torch.equal(kept[k], s0[k])  # what rank 0 wrote
        torch.testing.assert_close(s0[k], 0.7 * init[k] + 0.3 * live0[k], rtol=1e-5, atol=1e-6)
    assert load_file(out / "checkpoint-1" / EMA_FILE).keys() == init.keys()
