"""DailyDialog (Li et al. 2017) for context-dependent instruction tuning (arXiv 2311.07006).

A split dir holds three aligned files, one dialogue per line: `dialogues_<split>.txt` (utterances
separated by `__eou__`), `dialogues_act_<split>.txt` and `dialogues_emotion_<split>.txt` (one
number per utterance). Each turn j >= 1 of a dialogue becomes an example: the previous turns
(a window) are the context, turn j is the response, its act and emotion are the gold labels a
per-turn instruction is made from (`instructions.py`).

Importing this module registers the training set `dailydialog` and the bench `dailydialog`.
"""

import logging
from pathlib import Path

from ..data import Named, register_bench, register_train_set, user_first
from ..errors import UserError

log = logging.getLogger(__name__)

ACTS = {1: "inform", 2: "question", 3: "directive", 4: "commissive"}
EMOTIONS = {0: "none", 1: "anger", 2: "disgust", 3: "fear", 4: "happiness", 5: "sadness", 6: "surprise"}
SKIP_REASONS = ("empty_dialogue", "empty_utterance", "label_count", "unknown_act", "unknown_emotion")

DEFAULT_WINDOW = 3  # previous turns shown as context
BENCH_CAP: int | None = None  # examples the bench keeps (None: every validation turn; `eval --limit` cuts further)

# the corpus is tokenised ("Hello , sir . I ' m ..."): these undo the spacing, nothing else
_SPACING = ((" ,", ","), (" .", "."), (" ?", "?"), (" !", "!"), (" ' ", "'"), (" ’ ", "’"))


def normalise(utterance: str) -> str:
    """Strip, then undo the tokenised spacing lightly: " ," -> ",", " ." -> ".", " ?" -> "?",
    " !" -> "!", " ' " -> "'" (and the same for the curly apostrophe, " ’ " -> "’", which the
    corpus uses far more often). No other change: case, words and inner punctuation stay."""
    text = utterance.strip()
    for old, new in _SPACING:
        text = text.replace(old, new)
    return text


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the final newline ends the last line; it does not start another
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _labels(line: str) -> list[int | None]:
    return [int(x) if x.lstrip("-").isdigit() else None for x in line.split()]


def read_dailydialog(split_dir: Path) -> tuple[list[dict], dict]:
    """(dialogues, skip counts) of one split dir (the split is the dir's name: train, validation).

    Each dialogue is {"turns": [str], "acts": [int], "emotions": [int], "_where": "line N"};
    utterances are stripped and their tokenised spacing undone lightly (see `normalise`).
    A dialogue whose act or emotion count differs from its utterance count, with an unknown act
    or emotion id, or with an empty utterance is skipped and counted by reason (the first that
    applies, in the order of SKIP_REASONS' checks). A missing file, or files with different
    line counts, is a one-line UserError naming the file.
    """
    split_dir = Path(split_dir)
    split = split_dir.name
    text_path = split_dir / f"dialogues_{split}.txt"
    act_path = split_dir / f"dialogues_act_{split}.txt"
    emo_path = split_dir / f"dialogues_emotion_{split}.txt"
    texts, acts, emotions = _lines(text_path), _lines(act_path), _lines(emo_path)
    for path, lines in ((act_path, acts), (emo_path, emotions)):
        if len(lines) != len(texts):
            raise UserError(f"{path}: {len(lines)} lines, but {text_path.name} has {len(texts)}; "
                            "the files must align line by line")
    dialogues: list[dict] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for n, (line, act_line, emo_line) in enumerate(zip(texts, acts, emotions), 1):
        pieces = line.split("__eou__")
        if pieces and not pieces[-1].strip():  # the separator also ends the last utterance
            pieces.pop()
        turns = [normalise(p) for p in pieces]
        a, e = _labels(act_line), _labels(emo_line)
        if not turns:
            reason = "empty_dialogue"
        elif any(not t for t in turns):
            reason = "empty_utterance"
        elif len(a) != len(turns) or len(e) != len(turns):
            reason = "label_count"
        elif any(x not in ACTS for x in a):
            reason = "unknown_act"
        elif any(x not in EMOTIONS for x in e):
            reason = "unknown_emotion"
        else:
            dialogues.append({"turns": turns, "acts": a, "emotions": e, "_where": f"line {n}"})
            continue
        skipped[reason] += 1
        log.debug("%s: line %d skipped (%s)", text_path, n, reason)
    log.info("%s: %d dialogues read, %d skipped (%s)", text_path, len(dialogues), sum(skipped.values()),
             ", ".join(f"{k}: {v}" for k, v in skipped.items() if v) or "none")
    return dialogues, skipped


def turn_examples(dialogues: list[dict], window: int = DEFAULT_WINDOW, min_context: int = 1) -> list[dict]:
    """One example per turn j >= min_context of every dialogue: the up to `window` previous turns as
    context, turn j as the response, with its gold act and emotion. `dialogue` is the dialogue's
    index in `dialogues`; `_where` names its line and the turn (0-based)."""
    if window < 1 or min_context < 1:
        raise UserError(f"window and min_context must be at least 1 (got window={window}, min_context={min_context})")
    out = []
    for d, dialogue in enumerate(dialogues):
        turns = dialogue["turns"]
        for j in range(min_context, len(turns)):
            out.append({"context": turns[max(0, j - window):j], "response": turns[j], "act": dialogue["acts"][j],
                        "emotion": dialogue["emotions"][j], "dialogue": d, "turn": j,
                        "_where": f"{dialogue.get('_where', f'dialogue {d}')}, turn {j}"})
    return out


def to_chat(example: dict, system: str | None = None) -> list[dict]:
    """The context as chat messages ending with a user turn: the turn just before the response is the
    user's, the one before it the assistant's, and so on backwards; an optional system message first. A context
    of an even number of turns would open with the assistant, so its first turn is dropped (data.user_first)."""
    context = example["context"]
    n = len(context)
    messages = [{"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": turn} for i, turn in enumerate(context)]
    return ([{"role": "system", "content": system}] if system else []) + user_first(messages)


def training_rows(examples: list[dict]) -> list[dict]:
    """Chat rows for training (the response is the assistant's last message), with the gold labels in `meta`."""
    return [{"messages": to_chat(ex) + [{"role": "assistant", "content": ex["response"]}],
             "meta": {"act": ex["act"], "emotion": ex["emotion"], "response": ex["response"], "context": list(ex["context"])},
             "_where": ex["_where"]} for ex in examples]


def bench_rows(examples: list[dict]) -> list[dict]:
    """Bench rows: the prompt is the last context turn (the user's message), the category the act's name."""
    return [{"prompt": ex["context"][-1], "context": list(ex["context"]), "response": ex["response"], "act": ex["act"],
             "emotion": ex["emotion"], "act_name": ACTS[ex["act"]], "_where": ex["_where"]} for ex in examples]


def _checked(rows: list[dict], path: Path) -> list[dict]:
    if not rows:
        raise UserError(f"{path}: no usable dialogue turns")
    return rows


def read_train(path: Path) -> list[dict]:
    """The `dailydialog` training set: `path` is the split's text file; its dir holds the label files."""
    dialogues, _ = read_dailydialog(Path(path).parent)
    return _checked(training_rows(turn_examples(dialogues, DEFAULT_WINDOW)), path)


def read_bench(path: Path) -> list[dict]:
    """The `dailydialog` bench: every turn example of the validation split (up to BENCH_CAP)."""
    dialogues, _ = read_dailydialog(Path(path).parent)
    rows = bench_rows(turn_examples(dialogues, DEFAULT_WINDOW))
    return _checked(rows[:BENCH_CAP] if BENCH_CAP else rows, path)


# resolve_named checks `(data_dir / file).is_file()`, so both point at the text file and the readers take its dir
register_train_set("dailydialog", Named("dailydialog/train/dialogues_train.txt", None, reader=read_train,
                                             about="DailyDialog training dialogues (context -> next turn)"))
register_bench("dailydialog", Named("dailydialog/validation/dialogues_validation.txt", None, prompt_field="prompt",
                                    category_field="act_name", reader=read_bench, kind="dialogue",
                                    about="DailyDialog validation turns (BLEU, unigram F1, ROUGE-L)"))
