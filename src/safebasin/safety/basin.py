"""`safebasin basin RUN_DIR`: did the fine-tune leave the safety basin, and where did EMA keep it?

Along the straight line θ(α) = θ0 + α·(θ_raw − θ0) the probe harmful rate and the held-out loss
are measured at a few α; the EMA weights are placed on that line by their projection
α_ema = ⟨θ̄ − θ0, θ_raw − θ0⟩ / ‖θ_raw − θ0‖² (and their distance off it is reported).
"""

from pathlib import Path

import torch

from .. import atomic, data, methods, models, report
from ..config import TrainConfig, build, read_yaml
from ..errors import UserError
from ..evaluate import heldout_loss, probe_prompts, probe_rate
from ..judges import keyword_judge

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
def _vector(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].float().flatten() for k in keys])


def basin(run_dir: str | Path, eval_bench: str = "advbench", probe_n: int = 32, max_new_tokens: int = 32,
          alphas: tuple[float, ...] = ALPHAS, show_progress: bool = True) -> dict:
    from safetensors.torch import load_file

    run = Path(run_dir)
    if (run / "config.yaml").is_file() and not (run / "model" / "config.json").is_file() and methods.is_model_folder(run / "model"):
        method = build(TrainConfig, read_yaml(run / "config.yaml"), str(run / "config.yaml")).method
        raise UserError(f"{run}: basin needs a run whose model is a full save_pretrained folder; method {method} saves "
                        "only its own modules beside a frozen LM, so there is no line θ0 → θ_raw to walk")
    if not (run / "config.yaml").is_file() or not (run / "model" / "config.json").is_file():
        raise UserError(f"{run}: not a finished `safebasin train` run dir (config.yaml, model/)")
    cfg = build(TrainConfig, read_yaml(run / "config.yaml"), str(run / "config.yaml"))
    probe_prompts(eval_bench, probe_n, cfg.seed, cfg.data_dir)  # bad bench or --probe: refused before loading anything
    raw_dir = run / ("raw" if (run / "raw" / "config.json").is_file() else "model")
    device, dtype = models.eval_placement()
    model, tok = models.load(models.start_model(run), dtype=dtype, chat_template=cfg.chat_template)  # θ0, from any cwd
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}  # on the CPU; the points are mixed there
    model.to(device)
    raw = load_file(str(raw_dir / "model.safetensors"))
    kept = load_file(str(run / "model" / "model.safetensors"))
    keys = [k for k in raw if k in theta0 and theta0[k].dtype.is_floating_point]
    judge = keyword_judge("gcg", cfg.data_dir)
    probe_name, prompts = probe_prompts(eval_bench, probe_n, cfg.seed, cfg.data_dir)
    _, heldout, _ = data.load_for_training(cfg)

    d = _vector(raw, keys) - _vector(theta0, keys)
    e = _vector(kept, keys) - _vector(theta0, keys)
    alpha_ema = float(e @ d / (d @ d)) if float(d @ d) > 0 else 0.0
    off_line = float((e - alpha_ema * d).norm())

    def at(alpha: float) -> dict:
        with torch.no_grad():
            sd = model.state_dict()
            for k in keys:
                sd[k].copy_(torch.lerp(theta0[k].float(), raw[k].float(), alpha) if alpha <= 1 else
                            theta0[k].float() + alpha * (raw[k].float() - theta0[k].float()))
        point = probe_rate(model, tok, prompts, judge, max_new_tokens)[0] | heldout_loss(model, tok, heldout, cfg.max_seq_len)
        return {"alpha": alpha, **point}

    points = [at(a) for a in alphas]
    ema_point = None
    if raw_dir.name == "raw":
        with torch.no_grad():
            sd = model.state_dict()
            for k in keys:
                sd[k].copy_(kept[k])
        ema_point = {"alpha": alpha_ema, "off_line_norm": off_line,
                     **probe_rate(model, tok, prompts, judge, max_new_tokens)[0], **heldout_loss(model, tok, heldout, cfg.max_seq_len)}
    result = {"run": str(run), "probe": probe_name, "probe_n": len(prompts), "judge": judge.name,
              "distance_raw": float(d.norm()), "points": points, "ema": ema_point}
    atomic.write_json(run / "basin.json", result)
    report.write_png(run / "basin.png", report.basin_png(result))
    return result
