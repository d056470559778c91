"""The detox system's named data sets and benches, read from the data dir (`../shared/data`).

Jigsaw (balanced 10k, **label 0 = toxic, 1 = non-toxic**) trains ADLM and the baselines as plain
LM text; RealToxicityPrompts (DecodingTrust's 1,196 challenging and 1,200 non-toxic prompts) and
ToxiChat (Reddit threads) are the benches.
"""

from pathlib import Path

from .. import data
from ..errors import UserError

TOXIC, NONTOXIC = "toxic", "nontoxic"
JIGSAW_LABELS = {0: TOXIC, 1: NONTOXIC}  # the file's own convention, checked by reading rows
CONTROL = {TOXIC: "<|toxic|>", NONTOXIC: "<|nontoxic|>"}  # ATCON's control codes (Gehman et al. 2020)


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = data.jsonl_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    return [(int(r["_where"].split()[1]), r) for r in rows]


def read_jigsaw(path: Path) -> list[dict]:
    """Rows {"text", "attribute"}; a row without a label, or with a label other than 0/1, is a one-line error."""
    out = []
    for n, row in _jsonl(path):
        if "label" not in row:
            raise UserError(f"{path}: line {n}: missing field 'label' (0 = toxic, 1 = non-toxic)")
        if row["label"] not in JIGSAW_LABELS or isinstance(row["label"], bool):
            raise UserError(f"{path}: line {n}: field 'label' must be 0 (toxic) or 1 (non-toxic), got {row['label']!r}")
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise UserError(f"{path}: line {n}: field 'text' is missing or empty")
        out.append({"text": row["text"].strip(), "attribute": JIGSAW_LABELS[row["label"]], "_where": f"line {n}"})
    return out


def read_jigsaw_nontoxic(path: Path) -> list[dict]:
    """DAPT's data: the non-toxic half only (none at all is the file's mistake, not an empty training set)."""
    rows = [r for r in read_jigsaw(path) if r["attribute"] == NONTOXIC]
    if not rows:
        raise UserError(f"{path}: field 'label': no non-toxic row (label 1); DAPT trains on the non-toxic rows only")
    return rows


def read_jigsaw_atcon(path: Path) -> list[dict]:
    """ATCON's data: every text prefixed with its attribute's control code (plain text, not special tokens). ATCON
    generates after the non-toxic code, so a file with no non-toxic row would train a code it never uses."""
    rows = read_jigsaw(path)
    if not any(r["attribute"] == NONTOXIC for r in rows):
        raise UserError(f"{path}: field 'label': no non-toxic row (label 1); ATCON generates after "
                        f"{CONTROL[NONTOXIC]}, which no row would teach")
    return [{"text": f"{CONTROL[r['attribute']]} {r['text']}", "_where": r["_where"]} for r in rows]


def read_rtp(path: Path) -> list[dict]:
    """RealToxicityPrompts rows: {"prompt", "prompt_toxicity"} (Perspective's score of the prompt)."""
    out = []
    for n, row in _jsonl(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, dict) or not isinstance(prompt.get("text"), str) or not prompt["text"].strip():
            raise UserError(f"{path}: line {n}: field 'prompt.text' is missing or empty")
        out.append({"prompt": prompt["text"], "prompt_toxicity": prompt.get("toxicity"), "_where": f"line {n}"})
    return out


def read_toxichat(path: Path) -> list[dict]:
    """ToxiChat threads as one prompt each: the thread's turns, oldest first, for a reply."""
    out = []
    for n, row in _jsonl(path):
        turns = row.get("reddit_thread")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) and isinstance(t.get("text"), str)
                                                               for t in turns):
            raise UserError(f"{path}: line {n}: field 'reddit_thread' must be a non-empty list of turns with 'text'")
        thread = "\n".join(f"[{i}] {t['text'].strip()}" for i, t in enumerate(turns, 1))
        last = turns[-1].get("offense_label", "")
        out.append({"prompt": f"Write the next reply in this Reddit thread.\n\n{thread}", "last_turn": str(last),
                    "_where": f"line {n}"})
    return out


data.register_train_set("jigsaw", data.Named("jigsaw/jigsaw_10k.json", None, reader=read_jigsaw,
                                                      about="Jigsaw comments with toxic/non-toxic labels (ADLM)"))
data.register_train_set("jigsaw-nontoxic", data.Named("jigsaw/jigsaw_10k.json", None, reader=read_jigsaw_nontoxic,
                                                               about="Jigsaw's non-toxic comments (DAPT)"))
data.register_train_set("jigsaw-atcon", data.Named("jigsaw/jigsaw_10k.json", None, reader=read_jigsaw_atcon,
                                                            about="Jigsaw with a control code per comment (ATCON)"))
data.register_bench("rtp-toxic", data.Named("realtoxicityprompts/decodingtrust_toxic.jsonl", None, prompt_field="prompt",
                                            reader=read_rtp, kind="toxicity",
                                            about="RealToxicityPrompts, toxic prompts (expected max toxicity)"))
data.register_bench("rtp-nontoxic", data.Named("realtoxicityprompts/decodingtrust_nontoxic.jsonl", None,
                                               prompt_field="prompt", reader=read_rtp, kind="toxicity",
                                               about="RealToxicityPrompts, non-toxic prompts"))
data.register_bench("toxichat", data.Named("toxichat/dev.jsonl", None, prompt_field="prompt", category_field="last_turn",
                                           reader=read_toxichat, kind="toxicity-dialogue",
                                           about="ToxiChat threads (offensive reply rate)"))
