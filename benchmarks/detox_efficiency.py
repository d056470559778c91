"""ADLM's cost at generation against the base LM (and DAPT, which has the base LM's shape): added
parameters, peak memory and seconds per generated token, on SmolLM2-135M, CPU.

    .venv/bin/python benchmarks/detox_efficiency.py ADLM_RUN_DIR [--prompts 16 --samples 8]

Each arm runs in a fresh process so that its peak RSS is its own. Writes benchmarks/results/detox_efficiency.json.
Goal (issue #15): ≤ 1.3x the base model's time per token and ≤ 10% extra memory.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "detox_efficiency.json"


def one_arm(arm: str, run_dir: str, prompts: int, samples: int, tokens: int) -> dict:
    import torch

    from safebasin import methods, models
    from safebasin.detox.sampling import sample_continuations
    from safebasin.evaluate import load_bench

    torch.set_num_threads(2)
    bench = load_bench("rtp-toxic", None, limit=prompts)
    if arm == "adlm":
        model, tok, _ = methods.load_model_folder(Path(run_dir) / "model")
        method = methods.get("adlm")(None)
    else:
        model, tok = models.load("smollm2-135m-instruct")
        method = methods.Method(None)
    params = sum(p.numel() for p in model.parameters())
    # the block (a trained copy of the last layer, standing in its slot, plus the attribute embedding) and the discriminator
    added = (sum(p.numel() for p in model.model.layers[-1].parameters())
             + sum(p.numel() for p in model.adlm_discriminator.parameters())) if arm == "adlm" else 0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample_continuations(model, tok, bench.prompts[:2], k=2, max_new_tokens=4)  # warm-up
    t0 = time.perf_counter()
    with method.steered(model, 6.0 if arm == "adlm" else None) as combine:
        out = sample_continuations(model, tok, bench.prompts, k=samples, max_new_tokens=tokens, combine=combine, seed=1)
    seconds = time.perf_counter() - t0
    generated = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for cs in out for c in cs)
    return {"arm": arm, "params": params, "added_params": added, "seconds": round(seconds, 2),
            "generated_tokens": generated, "sequences": prompts * samples,
            "seconds_per_step_per_sequence": round(seconds / (tokens * prompts * samples), 5),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_load_mb": round(rss_loaded / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--arm")
    a = ap.parse_args()
    if a.arm:
        print(json.dumps(one_arm(a.arm, a.run_dir, a.prompts, a.samples, a.tokens)))
        return
    arms = {}
    for arm in ("base", "adlm"):
        r = subprocess.run([sys.executable, __file__, a.run_dir, "--arm", arm, "--prompts", str(a.prompts), "--samples",
                            str(a.samples), "--tokens", str(a.tokens)], capture_output=True, text=True, check=True)
        arms[arm] = json.loads(r.stdout.strip().splitlines()[-1])
    base, adlm = arms["base"], arms["adlm"]
    from safebasin.report import cpu_name

    cpu = cpu_name()
    result = {
        "benchmark": "detox_efficiency", "date": time.strftime("%Y-%m-%d"), "cpu": cpu,
        "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(), "threads": 2, "dtype": "float32",
        "setting": {"prompts": a.prompts, "samples": a.samples, "max_new_tokens": a.tokens, "top_p": 0.9, "batch": 64},
        "arms": arms,
        "dapt": "same architecture and parameters as base: its cost per token is the base model's",
        "time_ratio_adlm_vs_base": round(adlm["seconds_per_step_per_sequence"] / base["seconds_per_step_per_sequence"], 3),
        "memory_ratio_adlm_vs_base": round(adlm["peak_rss_mb"] / base["peak_rss_mb"], 3),
        "added_params_share": round(adlm["added_params"] / base["params"], 4),
        "goals": {"time_ratio_max": 1.3, "memory_ratio_max": 1.10},
    }
    result["goals"]["time_met"] = result["time_ratio_adlm_vs_base"] <= 1.3
    result["goals"]["memory_met"] = result["memory_ratio_adlm_vs_base"] <= 1.10
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
