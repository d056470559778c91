"""Wall-time cost of the safety monitor on the demo's aggressive recipe (issue goal: <= 15%).

    .venv/bin/python benchmarks/monitor_overhead.py --model runs/demo/aligned/model [--repeats 1]

Trains the same run with and without `monitor` (alternating), and writes
benchmarks/results/monitor_overhead.json.
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
                schedule="constant", ema_beta=0.98, seed=0)
    times = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            extra = {"monitor": args.monitor, "monitor_probe": args.probe, "monitor_max_new_tokens": args.tokens} if mode == "on" else {}
            cfg = TrainConfig(**base, **extra, output_dir=str(Path(tempfile.mkdtemp()) / "run"))
            t0 = time.perf_counter()
            train(cfg, show_progress=False)
            times[mode].append(time.perf_counter() - t0)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    result = {"benchmark": "monitor_overhead", "settings": vars(args), "seconds_off": times["off"], "seconds_on": times["on"],
              "overhead": on / off - 1, "goal": "<= 15%", "met": on / off - 1 <= 0.15, "machine": platform.platform()}
    atomic.write_json(Path(__file__).parent / "results" / "monitor_overhead.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
