"""Run by test_distributed under torchrun: FSDP2 (fully_shard) on CPU/gloo, the library's EMA on each
rank's shards, then one gather; writes the gathered θ̄ and raw weights (rank 0) for the test to compare.

Accelerate sets up FSDP only on accelerators, so this drives torch's FSDP2 directly: what is under test
is the EMA over DTensor shards (safebasin.ema.local_shard), the part safebasin adds to a sharded run.
"""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from safebasin.ema import EMA
from safebasin.models import tiny_llama


def batches(n_steps: int, world: int, rank: int):
    g = torch.Generator().manual_seed(0)
    for _ in range(n_steps):
        ids = torch.randint(0, 512, (4, 24), generator=g)
        yield ids if world == 1 else ids[rank * 4 // world:(rank + 1) * 4 // world]


def main(out: str, steps: int = 3, beta: float = 0.7) -> None:
    distributed = "RANK" in __import__("os").environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    model = tiny_llama(seed=0)
    if distributed:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ema = EMA(params, beta)
    for ids in batches(steps, world, rank):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()  # FSDP2 reduce-scatters with an average over ranks: the global mean of equal halves
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(params)
    shard_numel = sum(s.numel() for s in ema.shadow)
    full_numel = sum(p.numel() for p in params)

    def gathered() -> dict:
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone().contiguous()
                for n, p in model.named_parameters()}

    raw = gathered()
    ema.copy_to(params)
    kept = gathered()
    if rank == 0:
        save_file(raw, f"{out}/raw.safetensors")
        save_file(kept, f"{out}/kept.safetensors")
        save_file({"shard_numel": torch.tensor(shard_numel), "full_numel": torch.tensor(full_numel)}, f"{out}/numel.safetensors")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
