"""Wall-time cost of the safety monitor on the demo's aggressive recipe (issue goal: <= 15%).

    .venv/bin/python benchmarks/monitor_overhead.py --model runs/demo/aligned/model [--repeats 1]

Trains the same run three ways: no monitor; `--monitor 10` with the default budget (probes are
re-spaced to stay within 15% of the training time); and `--monitor 10` with the budget off (all
planned probes). Writes benchmarks/results/monitor_overhead.json with times, probe counts and
the cost of one probe.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from safebasin import atomic
from safebasin.config import TrainConfig
from safebasin.train import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/demo/aligned/model")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--monitor", type=int, default=10)
    ap.add_argument("--probe", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = dict(model=args.model, data="dolly", max_seq_len=128, heldout_size=32, lr=2e-4, batch_size=4, steps=args.steps,
                schedule="constant", ema_beta=0.98, seed=0, mixed_precision="bf16")
    modes = {"off": {}, "budget": {}, "unbudgeted": {"monitor_budget": 0}}
    times = {m: [] for m in modes}
    runs = {}
    for _ in range(args.repeats):
        for mode, extra in modes.items():
            if mode != "off":
                extra = extra | {"monitor": args.monitor, "monitor_probe": args.probe, "monitor_max_new_tokens": args.tokens}
            cfg = TrainConfig(**base, **extra, output_dir=str(Path(tempfile.mkdtemp()) / "run"))
            t0 = time.perf_counter()
            out = train(cfg, show_progress=False)
            times[mode].append(time.perf_counter() - t0)
            summary = json.loads((out / "train_summary.json").read_text())
            log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
            runs[mode] = {"probed_steps": summary.get("monitor_probed_steps"), "monitor_seconds": summary.get("monitor_seconds"),
                          "train_seconds": round(sum(r["seconds"] for r in log), 2),
                          "kept_harmful": [r["probe_harmful_kept"] for r in log if "probe_harmful_kept" in r],
                          "live_harmful": [r["probe_harmful_live"] for r in log if "probe_harmful_live" in r]}
    off = statistics.median(times["off"])
    overhead = {m: statistics.median(times[m]) / off - 1 for m in ("budget", "unbudgeted")}
    per_probe = runs["unbudgeted"]["monitor_seconds"] / max(1, len(runs["unbudgeted"]["probed_steps"]))
    result = {"benchmark": "monitor_overhead", "settings": vars(args) | {"mixed_precision": "bf16", "ema_beta": 0.98},
              "seconds": times, "overhead": overhead, "runs": runs,
              "seconds_per_probe_point": round(per_probe, 2),
              "seconds_per_train_step": round(runs["off"]["train_seconds"] / args.steps, 2),
              "goal": "<= 15%", "met_with_default_budget": overhead["budget"] <= 0.15,
              "met_with_all_probes": overhead["unbudgeted"] <= 0.15, "machine": platform.platform()}
    atomic.write_json(Path(__file__).parent / "results" / "monitor_overhead.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
