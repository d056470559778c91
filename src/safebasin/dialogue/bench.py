"""Scoring `--bench dailydialog` inside `safebasin eval`: a reply to each validation context, scored against
the reference turn.

A context-instruct model first writes its own instruction, then the response (`instruction_mode: self`);
the diagnostics give it the gold instruction (an upper bound) or a shuffled one (a sanity check). Only the
response is scored: BLEU-1/2/4, ROUGE-L, unigram F1, distinct-1/2; for an instruct model also how well its
own instructions name the gold act and emotion, and whether its responses carry out the act its
instruction asked for (an act classifier fit on the training responses). Per-item scores are kept in the
rows, so differences between models get paired bootstrap CIs (`metrics.paired_bootstrap`).
"""

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..generate import HFBackend
from . import metrics
from .instructions import parse_instruction, templated_instruction
from .methods import FIXED_INSTRUCTION, ContextInstruct, FixedInstruct, split_target, with_fixed_instruction

DEFAULT_MAX_NEW_TOKENS = 48
ACT_CLASSIFIER_ROWS = 20_000  # the first N training turns: ~15 s to fit on 2 cores instead of ~60 s for all 76k
_ACT_CLASSIFIER: dict = {}


def act_classifier(data_dir):
    """Fit once per process on the training split's responses and acts (deterministic)."""
    if "model" not in _ACT_CLASSIFIER:
        from .. import data as core

        examples, _ = core.load_examples("dailydialog", data_dir)
        examples = examples[:ACT_CLASSIFIER_ROWS]
        texts = [e["meta"]["response"] for e in examples]
        acts = [e["meta"]["act"] for e in examples]
        clf = metrics.ActClassifier()
        clf.fit(texts, acts)
        _ACT_CLASSIFIER["model"] = clf
    return _ACT_CLASSIFIER["model"]


class DialogueSettings(BaseModel):
    """`eval` settings of the dailydialog bench (`--bench-arg instruction_mode=gold`): which instruction a
    context-instruct model answers, its own (self), the templated gold one, or another turn's (shuffled)."""
    model_config = ConfigDict(extra="forbid")
    instruction_mode: Literal["self", "gold", "shuffled"] = "self"


DIALOGUE_HEADLINE = (("BLEU-1", "bleu-1", "{:.1f}"), ("BLEU-2", "bleu-2", "{:.1f}"), ("BLEU-4", "bleu-4", "{:.1f}"),
                     ("ROUGE-L", "rougeL", "{:.3f}"), ("unigram F1", "unigram_f1", "{:.3f}"),
                     ("distinct-2", "distinct-2", "{:.3f}"))


def evaluate_dialogue(model, tok, bench, *, label: str, batch_size: int = 16, max_new_tokens=None, method=None,
                      data_dir=None, show_progress: bool = True, seed: int = 0, instruction_mode: str = "self",
                      **_) -> tuple[dict, list[dict]]:
    rows = bench.rows
    from .data import to_chat

    chats = [to_chat(r) for r in rows]
    refs = [r["response"] for r in rows]
    instruct = isinstance(method, ContextInstruct)
    if isinstance(method, FixedInstruct):
        chats = [with_fixed_instruction(c) for c in chats]
    prefixes, gold_instr = None, None
    if instruct:
        gold_instr = [templated_instruction(r, level={"act", "emotion"}) for r in rows]
        if instruction_mode == "gold":
            prefixes = [f"Instruction: {g}\nResponse:" for g in gold_instr]
        elif instruction_mode == "shuffled":
            shuffled = gold_instr[:]
            random.Random(seed).shuffle(shuffled)
            prefixes = [f"Instruction: {g}\nResponse:" for g in shuffled]
        else:
            prefixes = ["Instruction:"] * len(rows)
    backend = HFBackend(model, tok, batch_size=batch_size, show_progress=show_progress)
    outputs = backend.generate(chats, max_new_tokens or DEFAULT_MAX_NEW_TOKENS, desc=f"{label}: {bench.name}",
                               prefixes=prefixes)
    instructions, responses = [], []
    for i, text in enumerate(outputs):
        if instruct and instruction_mode == "self":
            ins, resp = split_target("Instruction: " + text)
        elif instruct:
            ins, resp = prefixes[i].removeprefix("Instruction: ").removesuffix("\nResponse:"), split_target(text)[1]
        else:
            ins, resp = None, text.strip()
        instructions.append(ins)
        responses.append(resp)
    per_item = {"rougeL": [metrics.rouge_l(h, r) for h, r in zip(responses, refs)],
                "unigram_f1": [metrics.unigram_f1(h, r) for h, r in zip(responses, refs)]}
    result = {"kind": "dialogue", "source": bench.source, "n": len(rows), "instruction_mode": instruction_mode if instruct
              else None, "fixed_instruction": FIXED_INSTRUCTION if isinstance(method, FixedInstruct) else None,
              **metrics.bleu_scores(responses, refs),
              "rougeL": sum(per_item["rougeL"]) / len(rows), "unigram_f1": sum(per_item["unigram_f1"]) / len(rows),
              "rougeL_ci": list(metrics.bootstrap_mean_ci(per_item["rougeL"], seed=seed)),
              "unigram_f1_ci": list(metrics.bootstrap_mean_ci(per_item["unigram_f1"], seed=seed)),
              "distinct-1": metrics.distinct(responses, 1), "distinct-2": metrics.distinct(responses, 2)}
    clf = act_classifier(data_dir)
    predicted_acts = clf.predict(responses)
    gold_acts = [r["act"] for r in rows]
    result["response_act_vs_gold"] = metrics.label_agreement(list(predicted_acts), gold_acts, [1, 2, 3, 4])
    if instruct:
        parsed = [parse_instruction(i) if i else {"act": None, "emotion": None} for i in instructions]
        asked = [p["act"] for p in parsed]
        if instruction_mode == "self":
            result["instruction_act"] = metrics.label_agreement(asked, gold_acts, [1, 2, 3, 4])
            result["instruction_emotion"] = metrics.label_agreement([p["emotion"] for p in parsed],
                                                                    [r["emotion"] for r in rows], list(range(7)))
            result["act_majority_baseline"] = clf_majority(data_dir)
        # controllability: does the response carry out the act its instruction asked for?
        result["controllability"] = metrics.label_agreement(list(predicted_acts), [a or 0 for a in asked], [1, 2, 3, 4])
    out_rows = [{"benchmark": bench.name, "index": i, "context": r["context"], "reference": r["response"],
                 "instruction": ins, "response": resp, "gold_act": r["act"], "gold_emotion": r["emotion"],
                 "predicted_act": int(pa), "rougeL": rl, "unigram_f1": f1}
                for i, (r, ins, resp, pa, rl, f1) in enumerate(zip(rows, instructions, responses, predicted_acts,
                                                                  per_item["rougeL"], per_item["unigram_f1"]))]
    return result, out_rows


def clf_majority(data_dir) -> float:
    """The share of the most common act among training responses: what a constant guess gets."""
    from collections import Counter

    from .. import data as core

    examples, _ = core.load_examples("dailydialog", data_dir)
    counts = Counter(e["meta"]["act"] for e in examples)
    return max(counts.values()) / sum(counts.values())
