"""The cost of one safety-panel pass on one SmolLM2 model: `safebasin eval --bench panel` at 64 new tokens, greedy,
with a seeded sample of N prompts per set (the sweeps' setting) and, with --full, every prompt of every set.

    .venv/bin/python benchmarks/panel_pass.py [--model smollm2-135m-instruct] [--sample 25] [--full]

Writes benchmarks/results/panel_pass.json. Goal (issue #34): a panel pass ≤ 4 minutes on 2 CPU cores. Time it
when nothing else runs: the two cores are the budget.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "panel_pass.json"


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def one_pass(model: str, sample: int | None, batch_size: int) -> dict:
    from safebasin.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        results = evaluate(model, ["panel"], tmp, sample=sample, max_new_tokens=64, batch_size=batch_size,
                           show_progress=False)
        seconds = time.perf_counter() - t
    entry = next(iter(results["models"].values()))
    prompts = sum(b["n"] for b in entry["benchmarks"].values())
    return {"sample_per_set": sample, "prompts": prompts, "seconds": round(seconds, 1),
            "prompts_per_s": round(prompts / seconds, 2), "within_4_min": seconds <= 240,
            "per_set": {n: {"half": v["half"], "kind": v["kind"], "rate": v["rate"], "n": v["n"],
                            "ci": [round(c, 4) for c in v["ci"]]} for n, v in entry["panel"]["per_set"].items()},
            "halves": {h: {w: None if not entry["panel"][h][w] else
                           {k: entry["panel"][h][w][k] for k in ("worst_set", "worst_rate", "macro_mean", "macro_ci")}
                           for w in ("harmful", "over_refusal")} for h in ("all", "choose", "check")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--sample", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--full", action="store_true", help="also every prompt of every set (about 1,900; slow)")
    args = ap.parse_args()
    passes = [one_pass(args.model, args.sample, args.batch_size)]
    if args.full:
        passes.append(one_pass(args.model, None, args.batch_size))
    RESULTS.parent.mkdir(exist_ok=True)
    out = {"goal": "a panel pass <= 240 s on 2 CPU cores at 64 new tokens", "cpu": cpu(), "model": args.model,
           "passes": passes}
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
