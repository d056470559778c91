"""The dialogue methods, through the one training loop.

`context-instruct` (arXiv 2311.07006): the assistant's target is "Instruction: <the turn's instruction>
\\nResponse: <the response>", so the model learns to write its own per-turn instruction from the context
and then the response that carries it out; the loss covers both parts. `fixed-instruct`: one task
instruction (a system message) for every sample, the usual instruction-tuning baseline. Plain response
fine-tuning is `sft` on the same `dailydialog` rows.
"""

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import UserError
from ..methods import Method, register

FIXED_INSTRUCTION = "Continue the conversation: write the next turn, as the other speaker would say it."
LEVELS = ("act", "emotion", "keywords")


def target(instruction: str, response: str) -> str:
    return f"Instruction: {instruction}\nResponse: {response}"


def split_target(text: str) -> tuple[str | None, str]:
    """(instruction, response) from a generated "Instruction: ... Response: ..."; a reply without the
    format is all response (its instruction None, counted as unparsed)."""
    m = re.search(r"Instruction:\s*(.*?)\s*(?:\n|\s)Response:\s*(.*)", text, flags=re.S)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    m = re.search(r"Response:\s*(.*)", text, flags=re.S)
    return None, (m.group(1) if m else text).strip()


class ContextInstructSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    levels: list[str] = list(LEVELS)  # what the templated instruction says: the act, the emotion, keywords
    n_keywords: int = Field(2, ge=0, le=5)
    instructions_file: str | None = None  # model-written instructions (`safebasin.dialogue.instructions`), else templated

    @field_validator("levels", mode="before")
    @classmethod
    def _known_levels(cls, value):
        """`levels: act` means ["act"] ("act, emotion" two levels), never the letters of "act"."""
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError(f"expected a list of {', '.join(LEVELS)} (or one of them as a string)")
        bad = [x for x in value if x not in LEVELS]
        if bad:
            raise ValueError(f"unknown level(s) {bad}; use {', '.join(LEVELS)}")
        return value


def _meta(row, source: str) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("meta"), dict) or "response" not in row["meta"]:
        raise UserError(f"{source}: the dialogue methods need rows with per-turn labels (meta: act, emotion, response); "
                        "train on dailydialog")
    return row["meta"]


@register
class ContextInstruct(Method):
    name = "context-instruct"
    about = "dialogue: writes a per-turn instruction from the context, then the reply"
    Settings = ContextInstructSettings

    implied = {"data": "dailydialog", "filter_safety": False}

    def instructions(self, metas: list[dict]) -> list[str]:
        from .instructions import idf_table, templated_instruction

        args = self.settings(self.cfg)
        if args.instructions_file:
            return _read_instructions(args.instructions_file, metas)
        idf = idf_table([m["response"] for m in metas])
        return [templated_instruction(m, level=set(args.levels), idf=idf, n_keywords=args.n_keywords) for m in metas]

    def prepare_rows(self, rows):
        metas = [_meta(r, self.cfg.data) for r in rows]
        out = []
        for row, meta, instruction in zip(rows, metas, self.instructions(metas)):
            messages = row["messages"][:-1] + [{"role": "assistant", "content": target(instruction, meta["response"])}]
            out.append({"messages": messages, "meta": meta | {"instruction": instruction}})
        return out


@register
class FixedInstruct(Method):
    name = "fixed-instruct"
    about = "dialogue baseline: one fixed instruction for every turn"

    implied = {"data": "dailydialog", "filter_safety": False}

    def prepare_rows(self, rows):
        return [{"messages": with_fixed_instruction(r["messages"] if isinstance(r, dict) else r),
                 **({"meta": r["meta"]} if isinstance(r, dict) else {})} for r in rows]


def with_fixed_instruction(messages: list[dict]) -> list[dict]:
    return [{"role": "system", "content": FIXED_INSTRUCTION}] + [m for m in messages if m["role"] != "system"]


def _read_instructions(path: str, metas: list[dict]) -> list[str]:
    """Model-written instructions from a derived file, matched to rows by (context, response)."""
    from .. import data
    from .instructions import example_key

    table = {}
    for r in data.jsonl_rows(path):
        for field in ("key", "instruction"):
            if field not in r:
                raise UserError(f"{path}: {r['_where']}: field {field!r} is missing (rows as write_instructions writes them: "
                                "key, instruction)")
        if not isinstance(r["key"], str):
            raise UserError(f"{path}: {r['_where']}: field 'key' must be a string, got {type(r['key']).__name__}")
        if r["instruction"] is not None and not isinstance(r["instruction"], str):
            raise UserError(f"{path}: {r['_where']}: field 'instruction' must be a string or null, "
                            f"got {type(r['instruction']).__name__}")
        if r["instruction"]:
            table[r["key"]] = r["instruction"]
    missing = [i for i, m in enumerate(metas) if example_key(m) not in table]
    if missing:
        raise UserError(f"{path}: no instruction for {len(missing)} of {len(metas)} training rows (first: row {missing[0] + 1}); "
                        "write them with safebasin.dialogue.instructions.write_instructions")
    return [table[example_key(m)] for m in metas]
