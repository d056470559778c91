"""OpenDialKG (Moon et al. 2019) for knowledge-graph-grounded dialogue (SURGE, arXiv 2305.18846).

`opendialkg/opendialkg_subset.csv` holds 2,070 dialogues; its `Messages` column is a JSON list of chat
messages and `kgwalk/choose_path` actions, whose `metadata.path` is the KG path the speaker chose before
the next chat message. The Freebase-derived triples file is not available, so the KG here is the union
of every annotated path triple (with inverse edges for the GNNs): it has far fewer distractors than the
real KG, and every result says so.

Each assistant turn with at least one earlier message becomes an example: the last few messages as
context, the turn as the response, its gold path (when the assistant chose one, about 40% of turns), and
the candidate triples: the 1-hop neighbourhood of the KG entities string-matched in the history. A
candidate is written from the linked entity outwards, like the data's own paths: (e, r, o) for a fact
(e, r, o) and (e, ~r, h) for a fact (h, r, e), so a gold path triple is found among the candidates as is.

Importing this module registers the training set `opendialkg` (the train split) and the bench
`opendialkg` (the test split's turns that have a gold path, the only ones knowledge F1 is defined on), and the
bench `opendialkg-validation` (the same from the validation split, for choosing settings).
"""

import csv
import json
import logging
import random
import re
from functools import lru_cache
from pathlib import Path

from ..data import Named, register_bench, register_train_set, user_first
from ..errors import UserError

log = logging.getLogger(__name__)

CSV_FILE, ENTITIES_FILE, RELATIONS_FILE = "opendialkg_subset.csv", "opendialkg_entities.txt", "opendialkg_relations.txt"
SPLIT = (0.70, 0.15, 0.15)  # train / validation / test, by dialogue (the paper's random 70/15/15)
SPLIT_SEED = 0
WINDOW = 3  # context messages shown to the generator (after merging a speaker's consecutive messages)
MAX_CANDIDATES = 64  # 1-hop triples kept per turn (most recently mentioned entities first)
SKIP_REASONS = ("malformed_json", "no_assistant_turn", "bad_triple_arity", "unknown_relation")
MAX_ENTITY_WORDS = 8


def canonical(triple) -> tuple[str, str, str]:
    """The fact a path triple states: (o, r, s) for (s, ~r, o), else as written."""
    s, r, o = triple
    return (o, r[1:], s) if r.startswith("~") else (s, r, o)


def oriented(fact, anchor: str) -> tuple[str, str, str]:
    """A fact written from `anchor` outwards: (anchor, r, tail) or (anchor, ~r, head)."""
    h, r, t = fact
    return (h, r, t) if h == anchor else (t, "~" + r, h)


def linearise(triple) -> str:
    """A triple as text, always in the fact's own direction (a reversed relation would read as noise)."""
    h, r, t = canonical(triple)
    return f"{h} | {r} | {t}"


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    out = []
    for n, raw in enumerate(text.splitlines(), 1):  # a vocabulary: a line that is not text is an error, never skipped
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8").strip()
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: line {n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if line:
            out.append(line)
    return out


def _not_utf8(text: str) -> bool:
    """Whether text read with errors="surrogateescape" held bytes that are not UTF-8."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def read_dialogues(csv_path: Path) -> tuple[list[dict], dict]:
    """(dialogues, skip counts). A dialogue is {"messages": [{"role", "text", "path": [triples] | None}], "_where"}.

    A row whose Messages is not a JSON list (or not UTF-8 text), or with no assistant chat message, is skipped and
    counted (a non-UTF-8 Messages as malformed_json);
    a path with a triple that is not [subject, relation, object] strings, or whose relation is not in the
    relations list, is dropped (the message stays, without a gold path) and counted.
    """
    csv_path = Path(csv_path)
    relations = set(_read_lines(csv_path.parent / RELATIONS_FILE))
    csv.field_size_limit(1 << 30)
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    dialogues = []
    try:  # bytes that are not UTF-8 read as surrogates, so the row holding them is known (and skipped)
        handle = csv_path.open(encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as e:
        raise UserError(f"{csv_path}: cannot read: {e}") from None
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames and _not_utf8(",".join(reader.fieldnames)):
            raise UserError(f"{csv_path}: row 1 (the header): not UTF-8 text")
        if not reader.fieldnames or "Messages" not in reader.fieldnames:
            raise UserError(f"{csv_path}: no 'Messages' column (got {', '.join(reader.fieldnames or [])})")
        for n, row in enumerate(reader, 2):  # row 1 is the header
            where = f"{csv_path.name} row {n}"
            try:
                if _not_utf8(row["Messages"] or ""):
                    raise ValueError("not UTF-8 text")
                items = json.loads(row["Messages"] or "")
                if not isinstance(items, list):
                    raise ValueError("not a list")
            except ValueError as e:
                skipped["malformed_json"] += 1
                log.debug("%s: field 'Messages' is not a JSON list (%s); skipped", where, e)
                continue
            messages, pending = [], None
            for item in items:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "chat" and isinstance(item.get("message"), str) and item["message"].strip():
                    role = "assistant" if item.get("sender") == "assistant" else "user"
                    messages.append({"role": role, "text": " ".join(item["message"].split()), "path": pending})
                    pending = None
                elif item.get("action_id") == "kgwalk/choose_path":
                    pending = _path(item, relations, skipped, where)
            if not any(m["role"] == "assistant" for m in messages[1:]):
                skipped["no_assistant_turn"] += 1
                continue
            dialogues.append({"messages": messages, "_where": where})
    log.info("%s: %d dialogues read, %d skipped (%s)", csv_path, len(dialogues),
             skipped["malformed_json"] + skipped["no_assistant_turn"],
             ", ".join(f"{k}: {v}" for k, v in skipped.items() if v) or "none")
    return dialogues, skipped


def _path(item: dict, relations: set, skipped: dict, where: str) -> list | None:
    try:
        triples = item["metadata"]["path"][1]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(triples, list) or not triples:
        return None
    for t in triples:
        if not (isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) and x.strip() for x in t)):
            skipped["bad_triple_arity"] += 1
            log.debug("%s: path triple %r is not [subject, relation, object]; path dropped", where, t)
            return None
        if t[1].lstrip("~") not in relations:
            skipped["unknown_relation"] += 1
            log.debug("%s: relation %r is not in %s; path dropped", where, t[1], RELATIONS_FILE)
            return None
    return [tuple(t) for t in triples]


class KG:
    """The union of the annotated path facts: entity -> facts touching it, and a name matcher for linking."""

    def __init__(self, dialogues: list[dict]):
        facts = set()
        for d in dialogues:
            for m in d["messages"]:
                for t in m["path"] or ():
                    facts.add(canonical(t))
        self.facts = sorted(facts)
        self.by_entity: dict[str, list] = {}
        for f in self.facts:
            self.by_entity.setdefault(f[0], []).append(f)
            if f[2] != f[0]:
                self.by_entity.setdefault(f[2], []).append(f)
        self.entities = sorted(self.by_entity)
        self.relations = sorted({f[1] for f in self.facts})
        self._names = {}
        for e in self.entities:
            key = _norm(e)
            if key and len(key) >= 3 and len(key.split()) <= MAX_ENTITY_WORDS:
                self._names.setdefault(key, e)
        self.by_relation: dict[str, list[str]] = {}  # relation -> the tails it reaches (for counterfactual swaps)
        self.heads_by_relation: dict[str, list[str]] = {}
        for h, r, t in self.facts:
            self.by_relation.setdefault(r, []).append(t)
            self.heads_by_relation.setdefault(r, []).append(h)

    def link(self, text: str) -> list[str]:
        """KG entities whose name occurs in `text` as whole words (case-insensitive), in order of last mention.

        Plain n-gram lookup: a name matcher over the ~3.5k KG entities needs nothing more (entities of the
        100k list that are not in this KG have no triples, so linking them would add no candidate)."""
        words = _norm(text).split()
        last = {}
        for i in range(len(words)):
            for n in range(1, min(MAX_ENTITY_WORDS, len(words) - i) + 1):
                e = self._names.get(" ".join(words[i: i + n]))
                if e is not None:
                    last[e] = i + n
        return sorted(last, key=lambda e: (-last[e], e))

    def candidates(self, entities: list[str], limit: int = MAX_CANDIDATES) -> list[tuple[str, str, str]]:
        """The 1-hop triples around `entities`, written from each entity outwards, most recent entity first."""
        out, seen = [], set()
        for e in entities:
            for f in self.by_entity.get(e, ()):
                if f not in seen:
                    seen.add(f)
                    out.append(oriented(f, e))
        return out[:limit]

    def mentions(self, text: str) -> set[str]:
        return set(self.link(text))


def split_dialogues(dialogues: list[dict], seed: int = SPLIT_SEED) -> dict[str, list[dict]]:
    """train / validation / test by dialogue, seeded: no turn of a test dialogue is ever trained on."""
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    n_train, n_val = round(SPLIT[0] * len(order)), round(SPLIT[1] * len(order))
    parts = {"train": order[:n_train], "validation": order[n_train: n_train + n_val], "test": order[n_train + n_val:]}
    return {k: [dialogues[i] for i in sorted(v)] for k, v in parts.items()}


def merged(messages: list[dict]) -> list[dict]:
    """Consecutive messages of one speaker joined, so roles alternate as chat templates expect."""
    out = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": out[-1]["content"] + " " + m["text"]}
        else:
            out.append({"role": m["role"], "content": m["text"]})
    return out


def turn_examples(dialogues: list[dict], kg: KG, window: int = WINDOW) -> list[dict]:
    """One example per assistant message j >= 1: context, response, gold path (or None), candidates."""
    out = []
    for d, dialogue in enumerate(dialogues):
        msgs = dialogue["messages"]
        for j in range(1, len(msgs)):
            m = msgs[j]
            if m["role"] != "assistant":
                continue
            history = merged(msgs[:j])
            entities = kg.link(" ".join(x["text"] for x in msgs[:j]))
            gold = [list(t) for t in m["path"]] if m["path"] else None
            out.append({"context": user_first(history[-window:]), "response": m["text"], "gold": gold,
                        "entities": entities, "candidates": [list(t) for t in kg.candidates(entities)],
                        "dialogue": d, "turn": j, "_where": f"{dialogue['_where']}, message {j + 1}"})
    return out


def gold_tails(example: dict) -> list[str]:
    """The entities the gold path walks to (each triple's written object): what a grounded reply names."""
    return sorted({t[2] for t in example["gold"] or ()})


@lru_cache(maxsize=4)
def _load(csv_path: str) -> tuple[KG, dict]:
    dialogues, skipped = read_dialogues(Path(csv_path))
    if not dialogues:
        raise UserError(f"{csv_path}: no usable dialogues ({', '.join(f'{k}: {v}' for k, v in skipped.items() if v)})")
    return KG(dialogues), split_dialogues(dialogues) | {"skipped": skipped}


def load(csv_path: str | Path) -> tuple[KG, dict]:
    """(KG, {"train"|"validation"|"test": dialogues, "skipped": counts}); read once per process."""
    return _load(str(Path(csv_path).resolve()))


def examples(csv_path: str | Path, split: str) -> tuple[KG, list[dict]]:
    kg, parts = load(csv_path)
    return kg, turn_examples(parts[split], kg)


def to_row(example: dict) -> dict:
    """A chat training row (no knowledge yet: the method puts in its own), the KG fields in `meta`."""
    meta = {k: example[k] for k in ("context", "response", "gold", "entities", "candidates", "dialogue", "turn")}
    return {"messages": [*example["context"], {"role": "assistant", "content": example["response"]}], "meta": meta,
            "_where": example["_where"]}


def read_train(path: Path) -> list[dict]:
    _, ex = examples(path, "train")
    return [to_row(e) for e in ex]


def read_bench(path: Path, split: str = "test") -> list[dict]:
    """A split's assistant turns that have a gold path (the prompt is the last context message)."""
    _, ex = examples(path, split)
    return [to_row(e)["meta"] | {"prompt": e["context"][-1]["content"], "_where": e["_where"]} for e in ex if e["gold"]]


def read_validation_bench(path: Path) -> list[dict]:
    """The validation split's turns: where settings are chosen, so the test turns stay unseen until reported."""
    return read_bench(path, "validation")


register_train_set("opendialkg", Named(f"opendialkg/{CSV_FILE}", None, reader=read_train,
                                             about="OpenDialKG training turns with their KG paths"))
register_bench("opendialkg", Named(f"opendialkg/{CSV_FILE}", None, prompt_field="prompt", reader=read_bench, kind="kg",
                                       about="OpenDialKG held-out test turns (knowledge F1, unigram F1)"))
register_bench("opendialkg-validation", Named(f"opendialkg/{CSV_FILE}", None, prompt_field="prompt",
                                              reader=read_validation_bench, kind="kg",
                                              about="OpenDialKG validation turns (for choosing settings)"))
