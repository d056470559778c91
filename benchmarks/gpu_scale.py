"""GPU checks for issue #9 (needs CUDA; nothing here runs in CI).

    .venv/bin/python benchmarks/gpu_scale.py train   # bf16 full FT of a ~1B Llama at seq 2048 with EMA: tok/s, MFU, EMA overhead
    .venv/bin/python benchmarks/gpu_scale.py vllm    # vLLM vs HF batched greedy generation: throughput and agreement

The 1B model is a randomly initialised Llama (TinyLlama-1.1B shapes) built in-process, since GPU
machines may have no hub access; speed does not depend on the weights. MFU = 6·N·tokens / time /
the bf16 matmul peak measured on the same GPU. Writes benchmarks/results/gpu_<what>.json.
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

HERE = Path(__file__).resolve().parent


def matmul_peak_tflops(n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e12


def one_b_llama(folder: Path) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    from safebasin import models

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    tok = models.tiny_tokenizer(vocab_size=32000)  # ids only; the text does not matter for speed
    models.save(model, tok, folder)
    return sum(p.numel() for p in model.parameters())


def bench_train(args) -> dict:
    from safebasin.config import TrainConfig
    from safebasin.ema import EMA
    from safebasin.train import train

    tmp = Path(tempfile.mkdtemp())
    n_params = one_b_llama(tmp / "model")
    peak = matmul_peak_tflops()
    rows = [{"instruction": "x " * 900, "response": "y " * 1100} for _ in range(512)]  # ~2048 tokens each
    (tmp / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for beta in (None, 0.99):
        cfg = TrainConfig(model=str(tmp / "model"), data=str(tmp / "long.jsonl"), max_seq_len=2048, heldout_size=0,
                          batch_size=args.batch_size, steps=args.steps, lr=1e-5, mixed_precision="bf16",
                          gradient_checkpointing=args.checkpointing, ema_beta=beta, filter_safety=False,
                          output_dir=str(tmp / f"run-{beta}"))
        run = train(cfg, show_progress=False)
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()][2:]  # skip warm-up steps
        sec = statistics.median(r["seconds"] for r in log)
        tokens = statistics.median(r["tokens"] for r in log)
        out[str(beta)] = {"step_seconds": sec, "tokens_per_s": tokens / sec,
                          "mfu": 6 * n_params * tokens / sec / (peak * 1e12)}
    # the EMA update by itself, on the same parameters
    params = [torch.nn.Parameter(torch.randn(p, device="cuda", dtype=torch.float32)) for p in (n_params // 8,) * 8]
    ema = EMA(params, 0.99)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        ema.update(params)
    torch.cuda.synchronize()
    update = (time.perf_counter() - t0) / 20
    return {"params": n_params, "bf16_matmul_peak_tflops": peak, "runs": out, "ema_update_seconds": update,
            "ema_overhead_vs_step": update / out["None"]["step_seconds"],
            "goals": {"mfu": ">= 40% at seq 2048", "ema_overhead": "<= 2%"}}


def bench_vllm(args) -> dict:
    from safebasin import models
    from safebasin.evaluate import load_bench
    from safebasin.generate import HFBackend, VLLMBackend
    from safebasin.judges import keyword_judge

    prompts = load_bench("advbench", None, limit=args.prompts).prompts
    judge = keyword_judge("gcg")
    source = models.resolve(args.model)
    model, tok = models.load(source, dtype=torch.bfloat16)
    model.to("cuda")
    t0 = time.perf_counter()
    hf = HFBackend(model, tok, batch_size=64, show_progress=False).generate(prompts, args.max_new_tokens)
    hf_s = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache()
    backend = VLLMBackend(source, tok, show_progress=False, gpu_memory_utilization=0.8)
    t0 = time.perf_counter()
    vl = backend.generate(prompts, args.max_new_tokens)
    vl_s = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(hf, vl))
    verdicts = sum(judge.harmful(a) == judge.harmful(b) for a, b in zip(hf, vl))
    return {"model": args.model, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
            "hf_prompts_per_s": len(prompts) / hf_s, "vllm_prompts_per_s": len(prompts) / vl_s, "speedup": hf_s / vl_s,
            "identical_outputs": same / len(prompts), "same_verdict": verdicts / len(prompts),
            "harmful_rate_hf": sum(map(judge.harmful, hf)) / len(hf), "harmful_rate_vllm": sum(map(judge.harmful, vl)) / len(vl)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "vllm"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=520)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_scale.py needs a CUDA GPU")
    result = bench_train(args) if args.what == "train" else bench_vllm(args)
    result |= {"benchmark": f"gpu_{args.what}", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "machine": platform.platform()}
    atomic.write_json(HERE / "results" / f"gpu_{args.what}.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
