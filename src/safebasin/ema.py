"""Parameter-space EMA, the paper's method: θ̄ ← β·θ̄ + (1−β)·θ after every optimizer step.

θ̄ starts at the initial (aligned) weights and is the model you keep. It is held in float32
(even when training in bf16) and updated with one fused in-place op over all tensors.
Under FSDP/ZeRO-3 each rank holds and updates only its own shard: `params` are that rank's.
"""

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, params: list[torch.Tensor], beta: float, device: str | torch.device | None = None):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"ema beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.device = torch.device(device) if device is not None else None
        self.shadow = [p.detach().to(device=self.device or p.device, dtype=torch.float32, copy=True) for p in params]

    @torch.no_grad()
    def update(self, params: list[torch.Tensor]) -> None:
        live = [p.detach() for p in params]
        if live and (live[0].dtype != torch.float32 or live[0].device != self.shadow[0].device):
            live = [p.to(device=s.device, dtype=torch.float32, non_blocking=True) for p, s in zip(live, self.shadow)]
        # lerp(θ̄, θ, 1−β) = θ̄ + (1−β)(θ − θ̄) = β·θ̄ + (1−β)·θ; exact at β=1 (keeps θ̄) and β=0 (takes θ)
        torch._foreach_lerp_(self.shadow, live, 1.0 - self.beta)

    @torch.no_grad()
    def copy_to(self, params: list[torch.Tensor]) -> None:
        """Write θ̄ into the model's tensors (cast to their dtype and device)."""
        for p, s in zip(params, self.shadow):
            p.copy_(s.to(device=p.device, dtype=p.dtype))

    @contextmanager
    def swapped(self, params: list[torch.Tensor]):
        """Inside the block the model holds θ̄ (to probe or save it); the live weights come back after."""
        live = [p.detach().clone() for p in params]
        self.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(params, live):
                    p.copy_(saved)

    def state_dict(self) -> dict:
        return {"beta": self.beta, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)
