"""The safety monitor: how harmful the live and the EMA weights are while training runs.

At a few steps the probe prompts (a seeded sample from a set disjoint from the eval bench) are
answered greedily and scored by the keyword judge: for a float32 run, the same number a separate
`safebasin eval` of those weights on that sample gives at the same batch size (a bf16 run is probed
under its bf16 autocast). Generation stops for a response as soon as it refuses, since its verdict
cannot change after that.

A probe costs seconds of generation, which on a small CPU run can be several training steps.
`monitor_budget` caps the monitor's share of the run: after every step, the probes still to come are re-spaced evenly over the rest of the run so that their cost, estimated as if
no response refused, stays within budget × the estimated training time. The last step is always
among them, when any fits.
"""

import logging
import math
import time

import torch

from .config import TrainConfig
from .ema import local_shard
from .evaluate import probe_prompts, probe_rate
from .judges import keyword_judge

log = logging.getLogger(__name__)


def plan(after: int, last: int, n: int) -> list[int]:
    """n probe steps spread evenly over (after, last], the last one at `last`."""
    n = min(n, last - after)
    return sorted({after + math.ceil((last - after) * i / n) for i in range(1, n + 1)}) if n > 0 else []


class Monitor:
    def __init__(self, cfg: TrainConfig, accelerator, model, tok, params: list, ema, steps: int,
                 theta0: list[torch.Tensor], is_sharded: bool):
        self.cfg, self.accelerator, self.model, self.tok = cfg, accelerator, model, tok
        self.params, self.ema, self.steps, self.theta0, self.is_sharded = params, ema, steps, theta0, is_sharded
        self.probe_name, self.prompts = probe_prompts(cfg.monitor_bench, cfg.monitor_probe, cfg.seed, cfg.data_dir)
        self.judge = keyword_judge(cfg.refusal_list, cfg.data_dir)
        self.batch_size = len(self.prompts)  # one batch: a decode step costs about the same at 16 or 32 rows on a CPU
        self.points = plan(0, steps, cfg.monitor)
        self.start: dict | None = None
        self.probed: list[int] = []  # steps probed, 0 = the start
        self.seconds = 0.0  # spent probing
        self.generations = 0  # probe passes (one per weight set)
        self.full_length_seconds = 0.0  # what they would have cost had no response been cut at its refusal
        self.step_seconds: list[float] = []  # training steps' own times, probes excluded
        self.thinned = False

    # --- measuring
    def _rate(self) -> float:
        # in the run's precision (bf16 autocast when training in bf16: ~1.6x faster on a CPU with avx512_bf16);
        # a float32 run is probed in float32, bit for bit what `eval` computes
        with self.accelerator.autocast():
            r, uncut = probe_rate(self.model, self.tok, self.prompts, self.judge, self.cfg.monitor_max_new_tokens,
                                  self.batch_size)
        self.full_length_seconds += uncut
        return r["harmful_rate"]

    def _dist(self, tensors) -> float:
        """‖θ − θ0‖ over the whole model; under sharding each rank sums its own shard."""
        sq = sum(float((local_shard(t).detach().float().cpu() - t0.float().cpu()).pow(2).sum())
                 for t, t0 in zip(tensors, self.theta0))
        if self.is_sharded:
            sq = float(self.accelerator.reduce(torch.tensor(sq, device=self.accelerator.device), "sum"))
        return sq ** 0.5

    def probe(self, step: int) -> dict:
        t0 = time.perf_counter()
        self.model.eval()
        row = {"probe": self.probe_name, "probe_harmful_live": self._rate(), "dist_live": self._dist(self.params)}
        self.generations += 1
        if self.ema is not None:
            if step == 0:  # θ̄ starts at θ0 = θ: the same weights, the same answers
                row |= {"probe_harmful_ema": row["probe_harmful_live"], "dist_ema": 0.0}
            else:
                with self.ema.swapped(self.params):
                    row |= {"probe_harmful_ema": self._rate(), "dist_ema": self._dist(self.ema.shadow)}
                self.generations += 1
        self.model.train()
        row["probe_harmful_kept"] = row.get("probe_harmful_ema", row["probe_harmful_live"])
        row["probe_seconds"] = round(time.perf_counter() - t0, 3)
        self.seconds += row["probe_seconds"]
        if step == 0:
            self.start = row
        self.probed.append(step)
        return row

    # --- scheduling
    def due(self, step: int) -> bool:
        return step in self.points

    def after_step(self, step: int, seconds: float) -> None:
        """Count the training step's time; re-space the probes still to come if the budget requires it.
        Re-planned after every step, as the estimate of a step's time settles (the first steps are slow)."""
        self.step_seconds.append(seconds)
        budget = self.cfg.monitor_budget
        if not budget:
            return
        # plan for responses that do not refuse (they run to max_new_tokens): a drifting model's, the case that matters
        per_generation = max(self.seconds, self.full_length_seconds) / max(1, self.generations)
        per_probe = per_generation * (2 if self.ema is not None else 1)
        steady = self.step_seconds[1:] or self.step_seconds  # the first step warms up caches and allocators
        per_step = sorted(steady)[len(steady) // 2]
        train_total = per_step * self.steps
        left = [p for p in self.points if p > step]
        fit = max(0, math.floor((budget * train_total - self.seconds) / per_probe)) if per_probe > 0 else len(left)
        wanted = self.points if fit >= len(left) else [p for p in self.points if p <= step] + plan(step, self.steps, fit)
        self.points, before = self._agree(wanted), self.points
        if self.points != before and not self.thinned:
            self.thinned = True
            log.info("monitor: a probe takes %.1f s (%.1f training steps); to keep the monitor within %.0f%% of the "
                     "training time it will probe %d more time(s) instead of %d (--monitor-budget 0 runs them all)",
                     per_probe, per_probe / per_step, 100 * budget, fit, len(left))

    def _agree(self, points: list[int]) -> list[int]:
        """Every rank takes part in a probe (sharded weights are gathered for it), so rank 0's timing decides;
        called on every rank after every step, since it is a collective."""
        if self.accelerator.num_processes == 1:
            return points
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([points])[0]

    def summary(self) -> dict:
        return {"monitor_start": self.start, "monitor_seconds": round(self.seconds, 2), "monitor_probed_steps": self.probed,
                "monitor_budget": self.cfg.monitor_budget}

    # --- checkpoints: a resumed run keeps its start reference and its schedule
    def state_dict(self) -> dict:
        return {"start": self.start, "points": self.points, "probed": self.probed, "seconds": self.seconds,
                "full_length_seconds": self.full_length_seconds, "generations": self.generations,
                "step_seconds": self.step_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.start, self.points, self.probed, self.seconds = state["start"], state["points"], state["probed"], state["seconds"]
        self.generations, self.step_seconds = state["generations"], state["step_seconds"]
        self.full_length_seconds = state["full_length_seconds"]
