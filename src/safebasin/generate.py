"""Greedy generation for evaluation, behind a small backend interface: HF transformers, or vLLM.

Prompts are sorted by length into batches so that left padding stays small; results come
back in the caller's order. Batch size is pinned in the eval settings, since greedy outputs
can shift with batch composition.
"""

import time
from typing import Protocol

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from .ui import progress


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int, desc: str | None = None) -> list[str]:
        """Greedy responses to single-turn user prompts, in the order given."""


def chat_prompt(tok, prompt: str | list[dict]) -> str:
    """A single-turn user prompt, or a whole conversation (guard models judge user+assistant turns)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    from .models import render_chat

    return render_chat(tok, messages, add_generation_prompt=True)


class StopWhenJudged(StoppingCriteria):
    """Stop a row once a keyword judge's verdict can no longer change: a refusal phrase has appeared in it.
    The stripped text so far is a substring of the stripped final text, so the verdict is the one the
    full-length response gets; the saving is the tokens after the refusal (most of an aligned model's)."""

    def __init__(self, tok, judge, prompt_len: int):
        self.tok, self.judge, self.prompt_len = tok, judge, prompt_len
        self.started, self.calls, self.first, self.last = time.perf_counter(), 0, 0.0, 0.0

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.calls += 1  # once per generated token: the timings tell prefill from decoding
        self.last = time.perf_counter() - self.started
        self.first = self.first or self.last
        texts = self.tok.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([not self.judge.harmful(t.strip()) for t in texts], dtype=torch.bool, device=input_ids.device)


class HFBackend:
    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 16, show_progress: bool = True, stop_judge=None):
        """`stop_judge`: a keyword judge; each response is cut once it holds a refusal phrase. Only for
        callers that keep the verdict, not the text (the training monitor, the basin plot)."""
        self.model, self.tok, self.batch_size, self.show_progress = model, tokenizer, batch_size, show_progress
        self.stop_judge = stop_judge
        self.full_length_seconds = 0.0  # with stop_judge: what the last generate() would have cost uncut

    def generate_chats(self, chats: list[list[dict]], max_new_tokens: int = 128, desc: str | None = None) -> list[str]:
        return self.generate(chats, max_new_tokens, desc)

    @torch.no_grad()
    def generate(self, prompts: list, max_new_tokens: int = 128, desc: str | None = None,
                 prefixes: list[str] | None = None) -> list[str]:
        """`prefixes`: text the assistant's reply starts with (a prefilled "Instruction: ..."), one per prompt."""
        tok, model = self.tok, self.model
        encoded = [tok(chat_prompt(tok, p) + (prefixes[i] if prefixes else ""), add_special_tokens=False)["input_ids"]
                   for i, p in enumerate(prompts)]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # longest first: OOM shows early
        gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                               eos_token_id=model.generation_config.eos_token_id or tok.eos_token_id)
        device = next(model.parameters()).device
        outputs: list[str] = [""] * len(prompts)
        self.full_length_seconds = 0.0
        side, tok.padding_side = tok.padding_side, "left"
        bar = progress(transient=True) if self.show_progress else None
        try:
            if bar:
                bar.start()
                task = bar.add_task(desc or "generate", total=len(prompts), info="")
            for start in range(0, len(order), self.batch_size):
                idx = order[start: start + self.batch_size]
                batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
                stop = StoppingCriteriaList([StopWhenJudged(tok, self.stop_judge, batch["input_ids"].shape[1])]) if self.stop_judge else None
                out = model.generate(**batch, generation_config=gen, stopping_criteria=stop)
                if stop:  # prefill + every token at the measured per-token cost (the whole run if it was one token)
                    crit = stop[0]
                    per_token = (crit.last - crit.first) / (crit.calls - 1) if crit.calls > 1 else crit.last
                    self.full_length_seconds += crit.first + (max_new_tokens - 1) * per_token
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


def pick_backend(requested: str) -> str:
    """auto: vLLM when it is installed and a GPU is present (much faster at scale), else HF."""
    import importlib.util

    from .errors import UserError

    if requested not in ("auto", "hf", "vllm"):
        raise UserError(f"unknown generation backend {requested!r}: use auto, hf or vllm")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "vllm":
        if not has_vllm:
            raise UserError("--backend vllm needs vLLM: pip install 'safebasin[vllm]'")
        if not torch.cuda.is_available():
            raise UserError("--backend vllm needs a GPU; use --backend hf on a CPU")
        return "vllm"
    if requested == "auto":
        return "vllm" if has_vllm and torch.cuda.is_available() else "hf"
    return "hf"


class VLLMBackend:
    """The same prompts as HFBackend, token for token (the chat template's ids, no extra BOS), decoded
    greedily by vLLM; responses go through the same judges and files."""
    name = "vllm"

    def __init__(self, folder: str, tokenizer, show_progress: bool = True, gpu_memory_utilization: float = 0.6,
                 max_model_len: int | None = None, seed: int = 0):
        from vllm import LLM

        self.tok, self.show_progress = tokenizer, show_progress
        # trust_remote_code stays off; leave room on the GPU for the HF copy that scores held-out loss
        self.llm = LLM(model=folder, tokenizer=folder, dtype="auto", seed=seed, trust_remote_code=False,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)

    def generate_chats(self, chats: list[list[dict]], max_new_tokens: int = 128, desc: str | None = None) -> list[str]:
        return self.generate(chats, max_new_tokens, desc)

    def generate(self, prompts: list, max_new_tokens: int = 128, desc: str | None = None) -> list[str]:
        from vllm import SamplingParams

        ids = [self.tok(chat_prompt(self.tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=self.show_progress)
        return [o.outputs[0].text.strip() for o in outs]

    def close(self) -> None:
        """Give the GPU memory back before the next model is loaded."""
        import gc

        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
