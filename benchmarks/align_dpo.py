"""An on-policy DPO stage after `safebasin align` (issue #34's "short preference stage"): does it move the start's
panel numbers, and at what cost? A measurement, not a shipped recipe (docs/guidelines.md says why).

Pairs: harmful prompts from safety_tuned_llamas rows the alignment mix did not use (kept apart from every scored
prompt, as align keeps its mix) where the aligned model complied (keyword judge): chosen = the data's refusal,
rejected = the model's reply; benign Alpaca/ORCA prompts with safety-sounding words where it refused: chosen =
the data's answer, rejected = its refusal. One epoch of TRL's DPOTrainer (sigmoid loss), then the panel at 25
prompts per set, 64 new tokens, the sample `benchmarks/panel_pass.py` scores the start on.

    .venv/bin/python benchmarks/align_dpo.py ALIGNED_DIR OUT_DIR [N_HARM N_BENIGN LR BETA]
    .venv/bin/safebasin eval OUT_DIR/model --bench panel --sample 25 --max-new-tokens 64 --batch-size 25 \
        --output-dir OUT_DIR/eval

Writes OUT_DIR/pairs.jsonl and OUT_DIR/model; benchmarks/results/align_dpo.json was assembled from one such run
(the two commands above) and the start's numbers in benchmarks/results/panel_pass.json.
"""
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

from safebasin import data, models
from safebasin.config import build, read_yaml
from safebasin.generate import HFBackend
from safebasin.judges import keyword_judge
from safebasin.safety import align as A

args = sys.argv[1:]
if len(args) < 2:
    sys.exit(__doc__)
args += ["480", "320", "2e-5", "0.1"][len(args) - 2:]  # the defaults of the recorded run
aligned, out = Path(args[0]), Path(args[1])
n_harm, n_ben, lr, beta = int(args[2]), int(args[3]), float(args[4]), float(args[5])
out.mkdir(parents=True, exist_ok=True)
cfg = build(A.AlignConfig, read_yaml(aligned / A.RECIPE_FILE), "align.yaml")
ddir = cfg.data_dir
used = {A.normalise(A.user_text(json.loads(l)["messages"])) for l in (aligned / A.MIX_FILE).open()}
rng = random.Random(1)

TRIGGER = re.compile(r"\b(kill|shoot|attack|steal|weapon|gun|bomb|drug|hack|poison|murder|explod|fight|destroy|knife|"
                     r"crime|criminal|illegal|violen|war|blood|danger|burn|smoke|beat|die|dead|death|terror|fire|cut|hurt|threat|virus|"
                     r"alcohol|gambl|lie|cheat|fake|fraud|spy|secret|password|break|prison|police|arrest|victim|abuse|"
                     r"risk|toxic|army|military|enemy|crash|injur|harm|pain|disease|weapon|explosive|dark|evil)", re.I)

safety, _ = data.load_examples("safety", ddir)
safety = [e for e in safety if A.normalise(A.user_text(e)) not in used]
harm = rng.sample(safety, min(len(safety), int(n_harm * 1.2)))
benign = []
for name in ("alpaca", "orca"):
    rows, _ = data.load_examples(name, ddir)
    rows = data.filter_safety(rows, data.safety_phrases(ddir))
    benign += [e for e in rows if A.normalise(A.user_text(e)) not in used and TRIGGER.search(A.user_text(e))
               and len(A.user_text(e)) < 600]
print("benign trigger pool", len(benign), flush=True)
ben = rng.sample(benign, min(len(benign), int(n_ben * 1.2)))
prompts = A.scored_prompts(ddir)
harm, d1 = A.keep_apart(harm, prompts, cfg.near_duplicate, "safety")
ben, d2 = A.keep_apart(ben, prompts, cfg.near_duplicate, "benign")
harm, ben = harm[:n_harm], ben[:n_ben]
print("kept apart", len(harm), len(ben), "dropped", len(d1), len(d2), flush=True)

model_dir = A.aligned_model(aligned)
model, tok = models.load(str(model_dir))
gen = HFBackend(model, tok, batch_size=16, show_progress=False)
judge = keyword_judge("gcg", ddir)
t = time.perf_counter()
harm_out = gen.generate([A.user_text(e) for e in harm], 48)
ben_out = gen.generate([A.user_text(e) for e in ben], 48)
print(f"generated {len(harm) + len(ben)} in {time.perf_counter() - t:.0f}s", flush=True)
pairs = []
complied = refused = 0
for e, o in zip(harm, harm_out):
    if judge.harmful(o):
        complied += 1
        pairs.append({"prompt": [{"role": "user", "content": A.user_text(e)}],
                      "chosen": [{"role": "assistant", "content": e[-1]["content"]}],
                      "rejected": [{"role": "assistant", "content": o}], "kind": "harmful"})
for e, o in zip(ben, ben_out):
    if not judge.harmful(o):
        refused += 1
        pairs.append({"prompt": [{"role": "user", "content": A.user_text(e)}],
                      "chosen": [{"role": "assistant", "content": e[-1]["content"]}],
                      "rejected": [{"role": "assistant", "content": o}], "kind": "benign"})
print(f"harmful complied {complied}/{len(harm)}, benign refused {refused}/{len(ben)}, pairs {len(pairs)}", flush=True)
rng.shuffle(pairs)
(out / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

torch.manual_seed(0)
ds = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
args = DPOConfig(output_dir=str(out / "trainer"), beta=beta, learning_rate=lr, per_device_train_batch_size=8,
                 num_train_epochs=1, max_length=128, logging_steps=2, save_strategy="no", report_to=[], seed=0,
                 lr_scheduler_type="cosine", warmup_steps=2, bf16=False, use_cpu=True, dataloader_num_workers=0)
t = time.perf_counter()
trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
trainer.train()
print(f"dpo trained {len(pairs)} pairs in {time.perf_counter() - t:.0f}s", flush=True)
for r in trainer.state.log_history:
    print(r)
trainer.model.save_pretrained(out / "model", safe_serialization=True)
tok.save_pretrained(out / "model")
