"""Training throughput and memory: safebasin vs TRL's SFTTrainer, and the EMA's overhead.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/train_throughput.py                      # SmolLM2-135M and a tiny Llama
    .venv/bin/python benchmarks/train_throughput.py --models tiny --repeats 3

Both programs train one epoch over the same rows (so both process the same real tokens) at the
same model, sequence length, batch size, optimizer (AdamW, constant lr) and completion-only loss.
Each measurement is a fresh subprocess (clean peak RSS); programs alternate A B A B so machine
drift cancels in the ratio. Writes benchmarks/results/train_throughput.json and a markdown table.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- workers (one per subprocess)

def _rows(n: int, data_dir: str | None):
    from safebasin import data
    from safebasin.config import TrainConfig

    train, _, _ = data.load_for_training(TrainConfig(data="dolly", data_dir=data_dir, heldout_size=0, max_examples=n))
    return train


def worker_safebasin(args) -> dict:
    from safebasin.config import TrainConfig
    from safebasin.train import train

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = TrainConfig(model=args.model_dir, data="dolly", data_dir=args.data_dir, heldout_size=0, max_examples=args.rows,
                      max_seq_len=args.seq, batch_size=args.batch, epochs=1, lr=1e-5, schedule="constant", grad_clip=1.0,
                      ema_beta=args.ema, ema_on_cpu=args.ema_on_cpu, group_by_length=args.group, output_dir=str(out))
    t0 = time.perf_counter()
    train(cfg, show_progress=False)
    total = time.perf_counter() - t0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steady = [r["seconds"] for r in log[1:]] or [log[0]["seconds"]]
    tokens = sum(r["tokens"] for r in log)
    padded = sum(r["padded_tokens"] for r in log)
    train_s = sum(r["seconds"] for r in log)
    return {"tokens": tokens, "padded_tokens": padded, "train_seconds": train_s, "wall_seconds": total,
            "step_seconds_median": statistics.median(steady), "steps": len(log)}


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = _rows(args.rows, args.data_dir)
    ds = Dataset.from_list([{"prompt": ex[:-1], "completion": ex[-1:]} for ex in rows])
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    out = tempfile.mkdtemp()
    cfg = SFTConfig(output_dir=out, max_length=args.seq, per_device_train_batch_size=args.batch, num_train_epochs=1,
                    learning_rate=1e-5, lr_scheduler_type="constant", optim="adamw_torch", max_grad_norm=1.0,
                    completion_only_loss=True, logging_steps=1000, save_strategy="no", report_to=[], seed=0,
                    dataloader_num_workers=0, use_cpu=True, bf16=False, fp16=False, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    real = padded = 0
    for batch in trainer.get_train_dataloader():  # the same batches the trainer will draw (seeded sampler)
        mask = batch["attention_mask"] if "attention_mask" in batch else (batch["input_ids"] != tok.pad_token_id)
        real += int(mask.sum())
        padded += mask.numel()
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    steady = times[1:] or times
    return {"tokens": real, "padded_tokens": padded, "train_seconds": sum(times), "wall_seconds": total,
            "step_seconds_median": statistics.median(steady), "steps": len(times)}


def worker_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = worker_safebasin(args) if args.worker == "safebasin" else worker_trl(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------- driver

def run_worker(kind: str, model_dir: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model-dir", model_dir, "--rows", str(args.rows),
           "--seq", str(args.seq), "--batch", str(args.batch), "--threads", str(args.threads)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    for k, v in extra.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v not in (None, False):
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{kind} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(line[7:])


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def matmul_peak(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        runs.append(2 * 2048 ** 3 / (time.perf_counter() - t0))
    return max(runs)


def model_dirs(names: list[str]) -> dict[str, str]:
    from safebasin import models

    out = {}
    for name in names:
        if name == "tiny":
            path = Path(tempfile.mkdtemp()) / "tiny"
            models.save(models.tiny_llama(seed=0, hidden=256, layers=4), models.tiny_tokenizer(), path)
            out[name] = str(path)
        else:
            out[name] = models.resolve(name)
    return out


def n_params(model_dir: str) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel") else
                   __import__("math").prod(f.get_slice(k).get_shape()) for k in f.keys())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["safebasin", "trl"])
    ap.add_argument("--model-dir")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "tiny"])
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir")
    ap.add_argument("--ema", type=float)
    ap.add_argument("--ema-on-cpu", action="store_true")
    ap.add_argument("--group", action="store_true")
    ap.add_argument("--skip-ema", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker_main(args)

    results = {"benchmark": "train_throughput", "rows": args.rows, "seq": args.seq, "batch": args.batch,
               "threads": args.threads, "repeats": args.repeats,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "models": {}}
    peak = matmul_peak(args.threads)
    results["matmul_peak_flops"] = peak
    for name, path in model_dirs(args.models).items():
        params = n_params(path)
        run_worker("safebasin", path, args, group=True)  # warm-up (caches, page cache)
        runs = {"safebasin": [], "trl": []}
        for _ in range(args.repeats):  # A B A B
            runs["safebasin"].append(run_worker("safebasin", path, args, group=True))
            runs["trl"].append(run_worker("trl", path, args))
        entry = {"params": params}
        for prog, rs in runs.items():
            tps = [r["tokens"] / r["train_seconds"] for r in rs]
            entry[prog] = {"tokens_per_s": stats(tps), "padding_fraction": 1 - rs[0]["tokens"] / rs[0]["padded_tokens"],
                           "tokens": rs[0]["tokens"], "steps": rs[0]["steps"], "peak_rss_mb": stats([r["peak_rss_mb"] for r in rs]),
                           "achieved_flops": 6 * params * statistics.median(tps), "mfu_vs_matmul_peak": 6 * params * statistics.median(tps) / peak}
        ratios = [a["tokens"] / a["train_seconds"] / (b["tokens"] / b["train_seconds"]) for a, b in zip(runs["safebasin"], runs["trl"])]
        entry["speedup_vs_trl"] = stats(ratios)
        entry["goal"], entry["met"] = ">= 1.3x TRL tokens/s", statistics.median(ratios) >= 1.3
        if not args.skip_ema and name != "tiny":
            ema = {"off": [], "on": [], "on_cpu": []}
            for _ in range(args.repeats):
                ema["off"].append(run_worker("safebasin", path, args, group=True))
                ema["on"].append(run_worker("safebasin", path, args, group=True, ema=0.99))
                ema["on_cpu"].append(run_worker("safebasin", path, args, group=True, ema=0.99, ema_on_cpu=True))
            off = statistics.median(r["step_seconds_median"] for r in ema["off"])
            entry["ema"] = {k: {"step_seconds": stats([r["step_seconds_median"] for r in v]),
                                "peak_rss_mb": stats([r["peak_rss_mb"] for r in v])} for k, v in ema.items()}
            entry["ema"]["overhead"] = statistics.median(r["step_seconds_median"] for r in ema["on"]) / off - 1
            entry["ema"]["extra_rss_mb"] = (statistics.median(r["peak_rss_mb"] for r in ema["on"])
                                            - statistics.median(r["peak_rss_mb"] for r in ema["off"]))
            entry["ema"]["one_fp32_copy_mb"] = params * 4 / 2 ** 20
            entry["ema"]["goal"] = "<= 3% step time, <= 1 extra float32 copy"
        results["models"][name] = entry
        print(json.dumps({name: entry}, indent=2), flush=True)
    from safebasin import atomic

    atomic.write_json(HERE / "results" / "train_throughput.json", results)


if __name__ == "__main__":
    main()
