"""Batched greedy generation vs one-prompt-at-a-time HF generate, at identical outputs.

    .venv/bin/python benchmarks/generation_throughput.py [--prompts 32] [--single 8] [--tokens 32] [--repeats 3]

Writes benchmarks/results/generation_throughput.json. Goal (issue 3 / 8): >= 5x prompts/s.
Runs alternate (batched, single, batched, single, ...) so drift in machine speed cancels in the ratio.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from safebasin import atomic, evaluate, models
from safebasin.generate import HFBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--single", type=int, default=8, help="prompts timed one at a time (per-prompt rate is compared)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = models.load(args.model)
    prompts = evaluate.load_bench("advbench", limit=args.prompts).prompts
    batched, single = HFBackend(model, tok, args.batch_size, False), HFBackend(model, tok, 1, False)
    batched.generate(prompts[:2], 4)  # warm-up
    rates = {"batched": [], "single": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter(); out_b = batched.generate(prompts, args.tokens); rates["batched"].append(len(prompts) / (time.perf_counter() - t0))
        t0 = time.perf_counter(); out_s = single.generate(prompts[: args.single], args.tokens); rates["single"].append(args.single / (time.perf_counter() - t0))
    ratio = [b / s for b, s in zip(rates["batched"], rates["single"])]
    same = sum(a == b for a, b in zip(out_b[: args.single], out_s))
    result = {
        "benchmark": "generation_throughput", "model": args.model, "prompts": args.prompts, "single_prompts": args.single,
        "max_new_tokens": args.tokens, "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
        "batched_prompts_per_s": {"median": statistics.median(rates["batched"]), "min": min(rates["batched"]), "max": max(rates["batched"])},
        "single_prompts_per_s": {"median": statistics.median(rates["single"]), "min": min(rates["single"]), "max": max(rates["single"])},
        "speedup": {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)},
        "identical_outputs": f"{same}/{args.single}", "goal": ">= 5x", "met": statistics.median(ratio) >= 5,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
    }
    atomic.write_json(Path(__file__).parent / "results" / "generation_throughput.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
