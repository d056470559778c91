"""Fine-tuning methods, for an honest comparison with the paper's EMA. All share one trainer.

| method      | what it does                                                       | source |
|-------------|--------------------------------------------------------------------|--------|
| sft         | plain fine-tuning (the baseline)                                   | Qi et al. 2023, "Fine-tuning aligned LMs compromises safety" |
| ema         | sft + parameter-space EMA θ̄ ← β·θ̄ + (1−β)·θ, θ̄ kept              | Kim, Kwak et al. 2025, arXiv 2508.12531 |
| safety-mix  | mix N (instruction -> refusal) rows into the benign data           | Bianchi et al. 2024, "Safety-Tuned LLaMAs" (SafeInstr) |
| lora        | low-rank adapters; limits how far the weights can move             | Hu et al. 2022, "LoRA" |
| interpolate | post-hoc θ = α·θ_ft + (1−α)·θ0                                     | Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (WiSE-FT) |
| l2-anchor   | loss + λ‖θ−θ0‖²: the regularisation view of staying in the basin   | Kirkpatrick et al. 2017 (EWC with identity Fisher); Xuhong et al. 2018 (L2-SP) |

Only safety-mix needs extra (safety) data. EMA and interpolate both end near θ0; EMA averages
the whole trajectory, interpolate only its end point.
"""

import random

import torch

from .errors import UserError


def mix_safety(train: list, cfg) -> tuple[list, int]:
    """The benign rows plus N safety rows drawn with the run's seed; returns (rows, N)."""
    from .data import load_examples

    safety, source = load_examples(cfg.safety_mix_data, cfg.data_dir)
    n = cfg.safety_mix_count if cfg.safety_mix_count is not None else round(cfg.safety_mix_fraction * len(train))
    if n > len(safety):
        raise UserError(f"{source}: safety-mix wants {n} safety rows but the file has {len(safety)}")
    picked = random.Random(cfg.seed + 7919).sample(range(len(safety)), n)
    return train + [safety[i] for i in picked], n


@torch.no_grad()
def interpolate(theta0: list[torch.Tensor], theta_ft: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    """α·θ_ft + (1−α)·θ0, exact at α=0 (θ0) and α=1 (θ_ft)."""
    return [torch.lerp(a.float(), b.to(a.device, torch.float32), alpha) for a, b in zip(theta0, theta_ft)]


@torch.no_grad()
def l2_anchor_grad(params: list[torch.Tensor], theta0: list[torch.Tensor], lam: float) -> float:
    """Add ∇(λ‖θ−θ0‖²) = 2λ(θ−θ0) to the gradients in place; returns the penalty λ‖θ−θ0‖²."""
    diff = torch._foreach_sub([p.detach() for p in params], theta0)
    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        raise RuntimeError("l2-anchor: a trainable parameter has no gradient")
    torch._foreach_add_(grads, diff, alpha=2.0 * lam)
    return lam * float(sum(float(n) ** 2 for n in torch._foreach_norm(diff)))
