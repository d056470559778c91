"""The EMA update's own cost, measured directly (end-to-end step times on a shared 2-core machine vary by
more than the update costs). Compares the fused in-place update with a per-tensor Python loop, on
SmolLM2-135M's parameters, against the median full-FT step time from train_throughput.json.

    .venv/bin/python benchmarks/ema_overhead.py
"""

import json
import statistics
import time
from pathlib import Path

import torch

from safebasin import atomic, models
from safebasin.ema import EMA

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int = 20) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    torch.set_num_threads(2)
    model, _ = models.load("smollm2-135m-instruct")
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    fused = EMA(params, 0.99)
    on_cpu = EMA(params, 0.99, device="cpu")

    def loop_update():  # what the fused op replaces
        with torch.no_grad():
            for s, p in zip(fused.shadow, params):
                s.mul_(0.99).add_(p, alpha=0.01)

    t = {"fused_foreach_lerp": timed(lambda: fused.update(params)), "python_loop": timed(loop_update),
         "fused_on_cpu_copy": timed(lambda: on_cpu.update(params))}
    step = None
    tt = HERE / "results" / "train_throughput.json"
    if tt.is_file():
        step = json.loads(tt.read_text())["models"]["smollm2-135m-instruct"]["ema"]["off"]["step_seconds"]["median"]
    result = {"benchmark": "ema_overhead", "params": n, "extra_fp32_copy_mb": n * 4 / 2 ** 20,
              "update_seconds": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in t.items()},
              "step_seconds_without_ema": step,
              "overhead_fused": statistics.median(t["fused_foreach_lerp"]) / step if step else None,
              "goal": "<= 3% of step time"}
    result["met"] = result["overhead_fused"] is not None and result["overhead_fused"] <= 0.03
    atomic.write_json(HERE / "results" / "ema_overhead.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
