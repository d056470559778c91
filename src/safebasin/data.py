"""Datasets: named sets from a data dir (hub id as the fallback), local files, chat formatting.

Every row becomes {"messages": [...]} with the assistant's answer last. Tokenization applies
the model's chat template and masks the prompt, so the loss covers response tokens only.
"""

import csv
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Named:
    file: str  # path under the data dir
    hub: str | None  # Hugging Face dataset id, the fallback
    hub_config: str | None = None
    hub_split: str = "train"
    prompt_field: str | None = None  # benchmarks: the prompt column
    category_field: str | None = None  # benchmarks: the category column
    where: tuple[str, str] | None = None  # benchmarks: keep rows with field == value
    kind: str = "harmful"  # benchmarks: "harmful" (lower harmful rate is better) or "over-refusal" (benign prompts)
    reader: Callable[[Path], list[dict]] | None = None  # a file format read_rows does not know (a system's own)
    about: str = ""  # one line for `--help`: what the set is


TRAIN_SETS: Registry[Named] = Registry("dataset", " or a .json/.jsonl/.csv file")
BENCH_SETS: Registry[Named] = Registry("bench", " or a CSV/JSON/JSONL/TXT file of prompts")

for _name, _spec in {
    "dolly": Named("dolly/dolly_3k_alpagasus_filtered.original_fields.jsonl", "databricks/databricks-dolly-15k",
                   about="benign instructions (Dolly, 3k AlpaGasus-filtered): the paper's fine-tuning data"),
    "alpaca": Named("alpaca/alpaca_data_5000_subset.json", "tatsu-lab/alpaca", about="benign instructions (Alpaca, 5k)"),
    "orca": Named("orca/orca_dpo_pairs_validation.intel_schema.jsonl", "Intel/orca_dpo_pairs",
                  about="benign instructions (ORCA DPO pairs, the chosen answers)"),
    # safety_tuned_llamas (Bianchi et al. 2024): harmful request -> refusal; aligns an unaligned model
    "safety": Named("safety_tuned_llamas/training/safety_only_data_Instructions.json", None,
                    about="harmful request -> refusal (safety_tuned_llamas): aligns, or mixes in"),
}.items():
    TRAIN_SETS.register(_name, _spec)

for _name, _spec in {
    "advbench": Named("advbench/harmful_behaviors.csv", "walledai/AdvBench", prompt_field="goal",
                      about="520 harmful instructions (harmful rate)"),
    "hexphi": Named("hex_phi/hexphi_public_300.json", "LLM-Tuning-Safety/HEx-PHI", prompt_field="goal", category_field="category",
                    about="300 harmful instructions in 11 policy categories (harmful rate)"),
    "jbb": Named("jailbreakbench/jbb_behaviors_harmful.csv", "JailbreakBench/JBB-Behaviors", "behaviors", "harmful",
                 prompt_field="Goal", category_field="Category", about="100 harmful behaviours (JailbreakBench)"),
    "jbb-benign": Named("jailbreakbench/jbb_behaviors_benign.csv", "JailbreakBench/JBB-Behaviors", "behaviors", "benign",
                        prompt_field="goal", category_field="category", kind="over-refusal",
                        about="JBB's 100 benign twins (over-refusal)"),
    "xstest": Named("xstest/xstest_prompts.csv", "walledai/XSTest", hub_split="test", prompt_field="prompt",
                    category_field="type", where=("label", "safe"), kind="over-refusal",
                    about="250 safe prompts that sound unsafe (over-refusal)"),
    "xstest-unsafe": Named("xstest/xstest_prompts.csv", "walledai/XSTest", hub_split="test", prompt_field="prompt",
                           category_field="type", where=("label", "unsafe"), about="XSTest's 200 unsafe contrasts"),
}.items():
    BENCH_SETS.register(_name, _spec)



def read_instruction_set(path: Path) -> list[dict]:
    """safety_tuned_llamas' evaluation format: {"instructions": [...], "inputs": [...]} in parallel lists; a
    non-empty input follows its instruction after a blank line, as in the Alpaca prompts they were written for."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read this prompt set: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("instructions"), list):
        raise UserError(f"{path}: field 'instructions': a prompt set needs a list of instructions (got "
                        f"{type(obj.get('instructions') if isinstance(obj, dict) else obj).__name__})")
    inputs = obj.get("inputs") or [""] * len(obj["instructions"])
    if not isinstance(inputs, list) or len(inputs) != len(obj["instructions"]):
        raise UserError(f"{path}: field 'inputs': must be a list as long as 'instructions' ({len(obj['instructions'])})")
    if not obj["instructions"]:
        raise UserError(f"{path}: field 'instructions': the prompt set is empty")
    rows = []
    for n, (instruction, extra) in enumerate(zip(obj["instructions"], inputs), 1):
        if not isinstance(instruction, str) or not instruction.strip():
            raise UserError(f"{path}: instructions[{n - 1}]: empty or not text")
        text = instruction.strip() + (f"\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else "")
        rows.append({"prompt": text, "_where": f"instruction {n}"})
    return rows


# safety_tuned_llamas' evaluation sets (Bianchi et al. 2024): more styles of harmful request (questions, hateful
# statements, controversial topics, physical safety) and two benign sets for over-refusal; the broad panel's sets
_STL = "safety_tuned_llamas/evaluation/"
for _name, _kind, _about in (("I-MaliciousInstructions", "harmful", "malicious instructions"),
                             ("Q-Harm", "harmful", "harmful questions"), ("I-CoNa", "harmful", "hateful statements"),
                             ("I-Controversial", "harmful", "controversial topics"),
                             ("I-PhysicalSafetyUnsafe", "harmful", "physically unsafe advice"),
                             ("I-PhysicalSafetySafe", "over-refusal", "physically safe advice (over-refusal)"),
                             ("I-Alpaca", "over-refusal", "plain Alpaca instructions (over-refusal)")):
    BENCH_SETS.register(_name, Named(f"{_STL}{_name}.json", None, prompt_field="prompt", kind=_kind, reader=read_instruction_set,
                                     about=f"{_about} (safety_tuned_llamas)"))

SAFETY_FILTER_FILE = "refusal_prefixes/qi2023_remove_safety_unwanted_words.json"


def register_train_set(name: str, spec: Named) -> None:
    """A system adds its named training set (`dailydialog`, `jigsaw`, ...) here, on import; no CLI change."""
    TRAIN_SETS.register(name, spec)


def register_bench(name: str, spec: Named) -> None:
    """A system adds its named benchmark (`rtp-toxic`, `opendialkg`, ...) here, on import; no CLI change."""
    BENCH_SETS.register(name, spec)


def is_bench(spec: str) -> bool:
    """A registered bench name or an existing prompts file: checked before any work starts."""
    return spec in BENCH_SETS or Path(spec).is_file()




# ---------------------------------------------------------------- where data lives

def data_dir(explicit: str | None = None) -> Path | None:
    """--data-dir, then $SAFEBASIN_DATA_DIR, then ../shared/data when it exists."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise UserError(f"data dir {explicit!r} does not exist")
        return path
    if os.environ.get("SAFEBASIN_DATA_DIR"):
        return data_dir(os.environ["SAFEBASIN_DATA_DIR"])
    for candidate in (Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _hub_rows(name: str, spec: Named, ddir: Path | None) -> list[dict]:
    where = f"{ddir / spec.file}" if ddir else "no data dir (set --data-dir or SAFEBASIN_DATA_DIR)"
    if not spec.hub:
        raise UserError(f"dataset {name!r}: not found ({where}) and it has no hub id")
    try:
        import datasets

        ds = datasets.load_dataset(spec.hub, spec.hub_config, split=spec.hub_split)
    except Exception as e:  # the hub raises many kinds; all mean "not available"
        raise UserError(f"dataset {name!r}: not found ({where}) and hub id {spec.hub!r} failed: {str(e).splitlines()[0]}") from None
    return [dict(r) for r in ds]


def resolve_named(name: str, registry: dict[str, Named], ddir: str | None) -> tuple[list[dict], str]:
    """Rows and a source label for a named set: the data dir's file, else the hub."""
    spec = registry[name]
    root = data_dir(ddir)
    if root and (root / spec.file).is_file():
        path = root / spec.file
        return (spec.reader or read_rows)(path), str(path)
    return _hub_rows(name, spec, root), f"hub:{spec.hub}"


# ---------------------------------------------------------------- reading files

def read_rows(path: str | Path) -> list[dict]:
    """Rows of a JSON list, JSONL, CSV or TXT file, each tagged with where it came from (`_where`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM (Excel's CSVs) is not part of the first field name
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    rows: list[dict] = []
    if suffix == ".jsonl":
        rows = jsonl_rows(path, text)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {e.lineno}: bad JSON: {e.msg}") from None
        except RecursionError:
            raise UserError(f"{path}: JSON nested too deeply") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for n, row in enumerate(data, 1):
            if not isinstance(row, dict):
                raise UserError(f"{path}: row {n}: expected a JSON object, got {type(row).__name__}")
            rows.append({**row, "_where": f"row {n}"})
    elif suffix == ".csv":
        try:
            reader = csv.DictReader(text.splitlines())
            for n, row in enumerate(reader, 2):  # line 1 is the header
                rows.append({(k or "").strip(): v for k, v in row.items()} | {"_where": f"line {n}"})
        except csv.Error as e:
            raise UserError(f"{path}: bad CSV: {e}") from None
    elif suffix == ".txt":
        rows = [{"prompt": line, "_where": f"line {n}"} for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        raise UserError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl, .csv or .txt)")
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def jsonl_rows(path: Path, text: str | None = None) -> list[dict]:
    """The JSON objects of a JSON Lines file (whatever its suffix), each tagged `_where: line N`."""
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read: {e}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {n}: bad JSON: {e.msg}") from None
        except RecursionError:
            raise UserError(f"{path}: line {n}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append({**row, "_where": f"line {n}"})
    return rows


# ---------------------------------------------------------------- instruction formats

FORMATS = {  # name: (prompt field, response field, optional extra-context field)
    "alpaca": ("instruction", "output", "input"),
    "dolly": ("instruction", "response", "context"),
    "orca": ("question", "chosen", None),
    "prompt-response": ("prompt", "response", None),
    "prompt-completion": ("prompt", "completion", None),
}


def detect_format(row: dict, source: str) -> str:
    if "messages" in row:
        return "messages"
    for name, (p, r, _) in FORMATS.items():
        if p in row and r in row:
            return name
    if "text" in row:
        return "text"
    keys = ", ".join(k for k in row if k != "_where") or "none"
    raise UserError(f"{source}: {row.get('_where', 'row 1')}: cannot detect the format from fields ({keys}); "
                    "expected instruction+output (Alpaca), instruction+response (Dolly), question+chosen (ORCA), messages, "
                    "or text (plain language-model text)")


def _text(row: dict, field: str, source: str, required: bool = True) -> str:
    where = row.get("_where", "?")
    if field not in row or row[field] is None:
        if required:
            raise UserError(f"{source}: {where}: missing field {field!r}")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise UserError(f"{source}: {where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


class Chat(list):
    """A row's messages, a plain list that remembers the row it came from: a chat template that refuses it
    later (at tokenization, after shuffling and splitting) still names the file's row."""

    def __init__(self, messages, where: str | None = None):
        super().__init__(messages)
        self.where = where


def to_messages(row: dict, fmt: str, source: str) -> list[dict]:
    where = row.get("_where", "?")
    return Chat(_messages(row, fmt, source, where), where)


def _messages(row: dict, fmt: str, source: str, where: str) -> list[dict]:
    if fmt == "messages":
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{source}: {where}: field 'messages' must be a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise UserError(f"{source}: {where}: field 'messages': each message needs string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{source}: {where}: field 'messages': the last message must be the assistant's")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    p, r, extra = FORMATS[fmt]
    prompt = _text(row, p, source)
    context = _text(row, extra, source, required=False) if extra else ""
    response = _text(row, r, source)
    user = f"{prompt}\n\n{context}" if context.strip() else prompt
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    if fmt == "orca" and isinstance(row.get("system"), str) and row["system"].strip():
        msgs.insert(0, {"role": "system", "content": row["system"]})
    return msgs


def load_examples(spec: str, ddir: str | None = None) -> tuple[list[list[dict]], str]:
    """Chat examples (lists of messages) from a dataset name or a local file."""
    if spec in TRAIN_SETS:
        rows, source = resolve_named(spec, TRAIN_SETS, ddir)
    elif Path(spec).suffix.lower() in (".json", ".jsonl", ".csv") or Path(spec).exists():
        rows, source = read_rows(spec), spec
    else:
        raise TRAIN_SETS.unknown(spec)
    fmt = detect_format(rows[0], source)
    if fmt == "text":
        return [to_text_example(row, source) for row in rows], source
    return [with_meta(to_messages(row, fmt, source), row) for row in rows], source


def with_meta(messages: list[dict], row: dict):
    """A chat example; a row's `meta` dict (a system's labels: a turn's act, a KG path) rides along beside it."""
    return {"messages": messages, "meta": row["meta"]} if isinstance(row.get("meta"), dict) else messages


def to_text_example(row: dict, source: str) -> dict:
    """Plain LM text (every token trained), with an optional attribute label for conditional methods."""
    example = {"text": _text(row, "text", source)}
    if row.get("attribute") is not None:
        example["attribute"] = _text(row, "attribute", source)
    return example


def example_text(example) -> str:
    """The text a filter reads: the answer of a chat example, or a plain-text example's text."""
    if isinstance(example, dict):
        return example["messages"][-1]["content"] if "messages" in example else example["text"]
    return example[-1]["content"]


def safety_phrases(ddir: str | None = None) -> list[str]:
    root = data_dir(ddir)
    if not root or not (root / SAFETY_FILTER_FILE).is_file():
        raise UserError(f"filter_safety needs {SAFETY_FILTER_FILE} in the data dir; set --data-dir or filter_safety: false")
    return json.loads((root / SAFETY_FILTER_FILE).read_text(encoding="utf-8"))


def filter_safety(examples: list[list[dict]], phrases: list[str]) -> list[list[dict]]:
    """Qi et al. 2023's "no-safety" filter: drop rows whose answer contains any phrase (case-insensitive)."""
    lowered = [p.lower() for p in phrases]
    return [ex for ex in examples if not any(p in example_text(ex).lower() for p in lowered)]


def split(examples: list, heldout_size: int, seed: int) -> tuple[list, list]:
    """(train, heldout), by a seeded shuffle: the same seed gives the same held-out rows."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    heldout = [examples[i] for i in order[:heldout_size]]
    train = [examples[i] for i in order[heldout_size:]]
    return train, heldout


def load_for_training(cfg) -> tuple[list, list, str]:
    """The train and held-out chat examples of a TrainConfig (filter, split, cap)."""
    examples, source = load_examples(cfg.data, cfg.data_dir)
    if cfg.filter_safety:
        before = len(examples)
        examples = filter_safety(examples, safety_phrases(cfg.data_dir))
        log.info("safety filter dropped %d of %d rows", before - len(examples), before)
    if len(examples) <= cfg.heldout_size:
        raise UserError(f"{source}: {len(examples)} rows left after filtering; need more than heldout_size={cfg.heldout_size}")
    train, heldout = split(examples, cfg.heldout_size, cfg.seed if cfg.split_seed is None else cfg.split_seed)
    if cfg.max_examples:
        train = train[: cfg.max_examples]
    return train, heldout, source


def mix_safety(train: list, safety_data: str, count: int | None, fraction: float, data_dir: str | None,
               seed: int) -> tuple[list, int]:
    """The benign rows plus N safety rows (`count`, else `fraction` of the benign rows) drawn with the run's seed;
    returns (rows, N). Used by safety-mix."""
    safety, source = load_examples(safety_data, data_dir)
    n = count if count is not None else round(fraction * len(train))
    if n > len(safety):
        raise UserError(f"{source}: safety-mix wants {n} safety rows but the file has {len(safety)}")
    picked = random.Random(seed + 7919).sample(range(len(safety)), n)
    return train + [safety[i] for i in picked], n


# ---------------------------------------------------------------- tokenization

def user_first(messages: list[dict]) -> list[dict]:
    """The messages with any assistant turns before the first user turn dropped (a system message kept): strict
    chat templates (Mistral, Gemma) refuse a conversation the assistant opens, and a context window cut from
    the middle of a dialogue can start with either speaker. Dropped, not merged: merging would put the
    assistant's words in the user's mouth."""
    head = [m for m in messages[:1] if m.get("role") == "system"]
    rest = messages[len(head):]
    first = next((i for i, m in enumerate(rest) if m.get("role") == "user"), len(rest))
    return head + rest[first:]


def encode(messages: list[dict], tok, max_seq_len: int, where: str | None = None) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated). Labels are -100 on the prompt: response-only loss."""
    from .models import render_chat

    prompt_text = render_chat(tok, messages[:-1], add_generation_prompt=True, where=where)
    full_text = render_chat(tok, messages, where=where)
    if not full_text.startswith(prompt_text):
        raise UserError("the chat template renders the prompt differently with and without the answer; "
                        "pass a --chat-template whose generation prompt is a prefix of the full chat")
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tok(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    ids = prompt_ids + response_ids
    labels = [-100] * len(prompt_ids) + response_ids
    truncated = len(ids) > max_seq_len
    return ids[:max_seq_len], labels[:max_seq_len], truncated


def encode_text(text: str, tok, max_seq_len: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for plain LM text: no chat template, every token trained, EOS at the end."""
    from .models import text_prefix_ids

    ids = text_prefix_ids(tok) + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids[:max_seq_len], ids[:max_seq_len], len(ids) > max_seq_len


def tokenize(examples: list, tok, max_seq_len: int, source: str = "data") -> list[dict]:
    """Encoded examples (chat: response-only labels; plain text: all tokens, with its attribute kept);
    those left with no response tokens after truncation are dropped."""
    out, truncated, dropped = [], 0, 0
    for n, example in enumerate(examples, 1):
        known = example.get("_where") if isinstance(example, dict) else getattr(example, "where", None)
        where = f"{source}: {known or f'example {n}'}"
        if isinstance(example, dict) and "messages" in example:
            ids, labels, cut = encode(example["messages"], tok, max_seq_len, where)
        elif isinstance(example, dict):
            ids, labels, cut = encode_text(example["text"], tok, max_seq_len)
        else:
            ids, labels, cut = encode(example, tok, max_seq_len, where)
        truncated += cut
        if all(x == -100 for x in labels) or len(ids) < 2:
            dropped += 1
            continue
        item = {"input_ids": ids, "labels": labels}
        if isinstance(example, dict) and "attribute" in example:
            item["attribute"] = example["attribute"]
        out.append(item)
    if truncated:
        log.info("%s: %d of %d examples truncated to max_seq_len=%d (%d left with no response tokens, dropped)",
                 source, truncated, len(examples), max_seq_len, dropped)
    if not out:
        raise UserError(f"{source}: every example was truncated to zero response tokens at max_seq_len={max_seq_len}; raise max_seq_len")
    return out


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked in attention and ignored by the loss."""
    width = max(len(x["input_ids"]) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        n = len(x["input_ids"])
        ids[i, :n] = torch.tensor(x["input_ids"])
        labels[i, :n] = torch.tensor(x["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Batches:
    """An endless, seeded stream of index batches. Its position is a small dict, so runs resume exactly.

    Each epoch is a fresh permutation from (seed, epoch). With several processes each takes
    its own slice of every global batch, so the union equals the single-process batch.
    With `lengths`, each window of 50 global batches is sorted by length before it is cut
    into batches (then the batches are shuffled): far less padding, the same rows per epoch.
    """

    GROUP_WINDOW = 50

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, lengths: list[int] | None = None):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.lengths = lengths
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None:
            return order
        size = self.batch_size * self.world
        window = size * self.GROUP_WINDOW
        grouped: list[list[int]] = []
        for start in range(0, self.n, window):
            chunk = sorted(order[start: start + window], key=lambda i: -self.lengths[i])
            grouped += [chunk[i: i + size] for i in range(0, len(chunk), size)]
        shuffled = torch.randperm(len(grouped), generator=g).tolist()
        return [i for b in shuffled for i in grouped[b]]
    def next(self) -> list[int]:
        size = self.batch_size * self.world
        picked = []
        while len(picked) < size:
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(size - len(picked), self.n - self.offset)
            picked += self._order[self.offset: self.offset + take]
            self.offset += take
        return picked[self.rank * self.batch_size: (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation()
