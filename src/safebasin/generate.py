"""Greedy generation for evaluation, behind a small backend interface (HF now, vLLM can plug in).

Prompts are sorted by length into batches so that left padding stays small; results come
back in the caller's order. Batch size is pinned in the eval settings, since greedy outputs
can shift with batch composition.
"""

from typing import Protocol

import torch
from transformers import GenerationConfig

from .ui import progress


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int, desc: str | None = None) -> list[str]:
        """Greedy responses to single-turn user prompts, in the order given."""


def chat_prompt(tok, prompt: str | list[dict]) -> str:
    """A single-turn user prompt, or a whole conversation (guard models judge user+assistant turns)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class HFBackend:
    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 16, show_progress: bool = True):
        self.model, self.tok, self.batch_size, self.show_progress = model, tokenizer, batch_size, show_progress

    def generate_chats(self, chats: list[list[dict]], max_new_tokens: int = 128, desc: str | None = None) -> list[str]:
        return self.generate(chats, max_new_tokens, desc)

    @torch.no_grad()
    def generate(self, prompts: list, max_new_tokens: int = 128, desc: str | None = None) -> list[str]:
        tok, model = self.tok, self.model
        encoded = [tok(chat_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # longest first: OOM shows early
        gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                               eos_token_id=model.generation_config.eos_token_id or tok.eos_token_id)
        device = next(model.parameters()).device
        outputs: list[str] = [""] * len(prompts)
        side, tok.padding_side = tok.padding_side, "left"
        bar = progress(transient=True) if self.show_progress else None
        try:
            if bar:
                bar.start()
                task = bar.add_task(desc or "generate", total=len(prompts), info="")
            for start in range(0, len(order), self.batch_size):
                idx = order[start: start + self.batch_size]
                batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
                out = model.generate(**batch, generation_config=gen)
                texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
                for i, text in zip(idx, texts):
                    outputs[i] = text.strip()
                if bar:
                    bar.update(task, advance=len(idx))
        finally:
            tok.padding_side = side
            if bar:
                bar.stop()
        return outputs
