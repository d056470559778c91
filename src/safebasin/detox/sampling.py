"""Seeded nucleus sampling of k continuations per prompt, with the KV cache, for every detox arm.

Written by hand because `generate` cannot do ADLM's step: one trunk pass whose projection block
returns logits for both attributes (2B rows from B), combined before sampling. Every arm (base,
DAPT, ATCON, ADLM) goes through this one loop, so they differ only in their model, not in decoding.
"""

import torch
from transformers import DynamicCache

from ..models import text_prefix_ids
from ..ui import progress


def nucleus_sample(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row from the smallest set of tokens whose probability reaches top_p (the top token always kept)."""
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
    sorted_probs = sorted_probs * keep
    pick = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, pick).squeeze(-1)


@torch.no_grad()
def sample_continuations(model, tok, prompts: list[str], *, k: int = 25, max_new_tokens: int = 20, top_p: float = 0.9,
                         seed: int = 0, batch_size: int = 64, combine=None, prefix: str = "",
                         show_progress: bool = False, desc: str = "sample") -> list[list[str]]:
    """k continuations per prompt (plain text: no chat template). `combine(logits, top_p) -> logits` maps the
    model's last-position logits (2B rows for a steered ADLM) to B rows, its nucleus applied; `prefix` goes before each prompt
    (ATCON's control code). Batch b uses the generator seeded (seed, b): the same seed gives the same text."""
    device = next(model.parameters()).device
    jobs = [(i, prefix + p) for i, p in enumerate(prompts) for _ in range(k)]
    out: list[list[str]] = [[] for _ in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    text_start = text_prefix_ids(tok)  # <bos> where the tokenizer's own encoding puts one
    bar = progress(transient=True) if show_progress else None
    task = bar.add_task(desc, total=len(jobs), info="") if bar else None
    if bar:
        bar.start()
    try:
        for b, start in enumerate(range(0, len(jobs), batch_size)):
            chunk = jobs[start: start + batch_size]
            enc = [text_start + tok(text, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for _, text in chunk]
            width = max(map(len, enc))
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)  # left padding
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + b)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=model.config)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1]  # only the last position: full-vocab logits for every prompt token are ~GBs
            done = torch.zeros(len(chunk), dtype=torch.bool)
            new = []
            for _ in range(max_new_tokens):
                if combine is not None:  # the method applies the nucleus itself, before it steers
                    token = nucleus_sample(combine(logits, top_p).cpu(), 1.0, generator)
                else:
                    token = nucleus_sample(logits.cpu(), top_p, generator)
                token = torch.where(done, torch.full_like(token, pad), token)
                new.append(token)
                done |= token == tok.eos_token_id
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones(len(chunk), 1, dtype=mask.dtype, device=device)], dim=1)
                positions = positions[:, -1:] + 1
                logits = model(input_ids=token[:, None].to(device), attention_mask=mask, position_ids=positions, cache=cache,
                               use_cache=True, logits_to_keep=1).logits[:, -1]
            tokens = torch.stack(new, dim=1).tolist() if new else [[] for _ in chunk]
            for (i, _), row in zip(chunk, tokens):
                row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
                out[i].append(tok.decode(row, skip_special_tokens=True))
            if bar:
                bar.update(task, advance=len(chunk))
    finally:
        if bar:
            bar.stop()
    return out
