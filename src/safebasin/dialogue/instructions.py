"""Per-turn instructions (arXiv 2311.07006): a sentence that, given the previous turns, says what the next
reply should do. Two sources:

- templated, from the target turn's gold labels (act, emotion) and its key words; each part can be left
  out (`level`) for ablations, and `parse_instruction` maps such a sentence back to the labels;
- model-written (the paper's way): an OpenAI-compatible endpoint reads (context, response) and writes the
  instruction, through `judges.LLMJudge`'s transport (retries, timeout, same-origin redirects, the key from
  the environment only) and its SQLite cache; the results are stored as a derived JSONL file.
"""

import hashlib
import json
import logging
import math
import re
from collections import Counter
from pathlib import Path

from ..atomic import write_jsonl
from ..errors import UserError
from ..judges import LLMJudge

log = logging.getLogger(__name__)

ACT_PHRASES = {
    1: "Share information or an opinion",
    2: "Ask a question",
    3: "Make a suggestion or request",
    4: "Accept, refuse or promise something",
}
TONES = {1: "angry", 2: "disgusted", 3: "worried", 4: "happy", 5: "sad", 6: "surprised"}  # 0 (none): no tone
_ARTICLE = {t: "an" if t[0] in "aeiou" else "a" for t in TONES.values()}
NO_ACT = "Respond"  # the sentence's start when the act level is left out
LEVELS = frozenset({"act", "emotion", "keywords"})

STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
else even ever every few for from further get gets getting got had hadn't has hasn't have haven't having he
he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll i'm i've if in into
is isn't it it's its itself just let let's like may me might more most much must mustn't my myself need no nor
not now of off oh ok okay on once one only or other ought our ours ourselves out over own please quite rather
really said same say says see shall shan't she she'd she'll she's should shouldn't so some such sure than
that that's the their theirs them themselves then there there's these they they'd they'll they're they've
thing things think this those though through thus to too under until up upon us very want was wasn't we we'd
we'll we're we've well were weren't what what's when when's where where's whether which while who who's whom
why why's will with won't would wouldn't yeah yes yet you you'd you'll you're you've your yours yourself
yourselves go going know right good great thanks thank mr mrs ms
""".split())
_WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-case word tokens (contractions and hyphenated words stay whole)."""
    return _WORD.findall(text.lower().replace("’", "'"))


def content_words(text: str) -> list[str]:
    """Words worth naming: not a stopword, not a contraction, at least 3 letters, not a number; first occurrences, in order."""
    return list(dict.fromkeys(w for w in words(text)
                              if len(w) >= 3 and w not in STOPWORDS and "'" not in w and not w.isdigit()))


def idf_table(texts: list[str]) -> dict[str, float]:
    """Smoothed inverse document frequency, log((1 + N) / (1 + df)) + 1, of every word in `texts`."""
    df: Counter = Counter()
    for text in texts:
        df.update(set(words(text)))
    n = len(texts)
    return {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()}


def keywords(example: dict, idf: dict | None = None, n: int = 2) -> list[str]:
    """Up to n content words of the response that the context does not contain, rarest (highest IDF) first;
    a word the table never saw counts as the rarest; ties keep the response's order. Deterministic."""
    seen = set(words(" ".join(example["context"])))
    candidates = [w for w in content_words(example["response"]) if w not in seen]
    if idf:
        top = max(idf.values())
        candidates = sorted(candidates, key=lambda w: -idf.get(w, top))  # sorted is stable: ties keep order
    return candidates[:n]


def _quoted(items: list[str]) -> str:
    q = [f'"{w}"' for w in items]
    return q[0] if len(q) == 1 else f"{', '.join(q[:-1])} and {q[-1]}"


def templated_instruction(example: dict, level: set[str] = LEVELS, idf: dict | None = None, n_keywords: int = 2) -> str:
    """The instruction for the example's response from its gold labels, e.g.
    'Ask a question in a happy tone, mentioning "bank" and "blocks".' Leave parts out with `level`
    (any subset of {"act", "emotion", "keywords"}); without the act it starts with "Respond"."""
    unknown = set(level) - LEVELS
    if unknown:
        raise UserError(f"unknown instruction level(s) {sorted(unknown)}: use any of {sorted(LEVELS)}")
    text = ACT_PHRASES[example["act"]] if "act" in level else NO_ACT
    tone = TONES.get(example["emotion"])
    if "emotion" in level and tone:
        text += f" in {_ARTICLE[tone]} {tone} tone"
    if "keywords" in level and n_keywords > 0:
        found = keywords(example, idf, n_keywords)
        if found:
            text += f", mentioning {_quoted(found)}"
    return text + "."


# the loose fallbacks for a generated instruction that does not use a template phrase; earliest match wins
_ACT_CUES = {
    1: r"\b(?:share|inform|tell|explain|describe|state|answer|give (?:information|an opinion))\w*",
    2: r"\b(?:ask|question|inquire|enquire)\w*",
    3: r"\b(?:suggest|request|recommend|advise|propose|invite|urge|tell them to)\w*",
    4: r"\b(?:accept|refuse|promise|agree|decline|offer|commit)\w*",
}
_TONE_WORD = {tone: e for e, tone in TONES.items()} | {
    "anger": 1, "angrily": 1, "annoyed": 1, "irritated": 1, "disgust": 2, "disgustedly": 2, "fear": 3, "fearful": 3,
    "afraid": 3, "anxious": 3, "worriedly": 3, "nervous": 3, "happily": 4, "cheerful": 4, "joyful": 4, "excited": 4,
    "sadly": 5, "sadness": 5, "unhappy": 5, "surprise": 6, "surprisedly": 6, "astonished": 6, "amazed": 6}


def parse_instruction(text: str) -> dict:
    """{"act": id or None, "emotion": id (0 when no tone)} of an instruction, to score a model's own
    instructions against the gold labels. Quoted key words are ignored. The act comes from its template
    phrase (else a loose cue such as "ask" or "suggest", the earliest wins); the emotion from its tone word
    in "in a(n) <tone> tone|voice|manner" (or an adverb such as "angrily")."""
    plain = re.sub(r'"[^"]*"', " ", text or "").lower()
    hits = [(plain.find(p.lower()), a) for a, p in ACT_PHRASES.items() if p.lower() in plain]
    if not hits:
        hits = [(m.start(), a) for a, cue in _ACT_CUES.items() for m in [re.search(cue, plain)] if m]
    act = min(hits)[1] if hits else None
    emotion = 0
    m = re.search(r"\b(\w+)\s+(?:tone|voice|manner|way)\b", plain)
    if m and m.group(1) in _TONE_WORD:
        emotion = _TONE_WORD[m.group(1)]
    else:
        adverbs = [(mm.start(), _TONE_WORD[mm.group(0)]) for mm in re.finditer(r"\b\w+ly\b", plain) if mm.group(0) in _TONE_WORD]
        emotion = min(adverbs)[1] if adverbs else 0
    return {"act": act, "emotion": emotion}


# ---------------------------------------------------------------- model-written instructions

WRITER_SYSTEM = (
    "You write instructions for a dialogue model. You read a conversation and the reply that came next, and write "
    "the one-sentence instruction that, given the conversation, would lead a speaker to give that reply: its intent "
    "(inform, ask, suggest or request, accept or refuse or promise), its tone, and what it is about. You do not "
    "quote the reply."
)
WRITER_TEMPLATE = """Conversation so far:
<<<{prompt}>>>

Next reply (by B):
<<<{response}>>>

Write one sentence addressed to B saying what to say next. Answer with at most one line of reasoning,
then a last line of the form "Instruction: <the sentence>"."""
WRITER_VERSION = "v1"  # part of the cache key and the derived file: change it when the wording changes
_INSTRUCTION = re.compile(r"^[\s*_#>-]*instruction[\s*_]*:[\s*_]*(.+?)[\s*_]*$", re.IGNORECASE)
_REPLY_PROBLEMS = ("reply had no", "malformed reply")  # the endpoint answered; an item it cannot do is a counted skip


def parse_written(text: str) -> str | None:
    """The instruction from a reply's last 'Instruction: ...' line (quotes and markdown stripped), else None."""
    for line in reversed((text or "").splitlines()):
        m = _INSTRUCTION.match(line)
        if m:
            found = m.group(1).strip().strip("\"'“”").strip()
            return found or None
    return None


def speaker_context(context: list[str]) -> str:
    """The context as 'A: ...' / 'B: ...' lines, the last one A's (the reply is B's)."""
    n = len(context)
    return "\n".join(f"{'A' if (n - 1 - i) % 2 == 0 else 'B'}: {turn}" for i, turn in enumerate(context))


def example_key(example: dict) -> str:
    """An example's identity in the derived file: a hash of its context and response."""
    return hashlib.sha256(json.dumps([list(example["context"]), example["response"]]).encode()).hexdigest()[:24]


class InstructionWriter(LLMJudge):
    """LLMJudge's transport and cache, asking for an instruction instead of a score. Its SQLite cache keeps
    text (not integers) in a file of its own, so instructions never mix with judge scores."""

    system, template, version, expects = WRITER_SYSTEM, WRITER_TEMPLATE, WRITER_VERSION, "'Instruction: ...' line"
    parse = staticmethod(parse_written)

    def __init__(self, url: str, model: str, **kwargs):
        from ..models import cache_dir

        kwargs.setdefault("cache_path", str(cache_dir() / "instruction_cache.db"))
        super().__init__(url, model, **kwargs)
        self.name = f"writer:{model}"

    def __repr__(self) -> str:  # never shows the key
        return f"InstructionWriter(url={_endpoint(self.url)!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _cache(self):
        import sqlite3

        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.cache_path, timeout=30)
        conn.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score TEXT NOT NULL)")  # score: the instruction
        return conn


def _endpoint(url: str) -> str:
    """The URL without user info, query or fragment: safe to print."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        port = u.port
    except ValueError:
        port = None
    return f"{u.scheme}://{u.hostname or ''}{f':{port}' if port else ''}{u.path}"


def split_url_model(url_model: str) -> tuple[str, str]:
    """'URL|MODEL' (an optional 'llm:' before it) -> (URL, MODEL); anything else is a one-line UserError."""
    from urllib.parse import urlsplit

    spec = url_model[4:] if url_model.startswith("llm:") else url_model
    url, _, model = spec.rpartition("|")
    u = urlsplit(url)
    try:
        u.port
        ok = u.scheme in ("http", "https") and bool(u.hostname) and bool(model.strip())
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"instruction writer {_endpoint(url) if url else url_model!r}: expected URL|MODEL with an http(s) URL, "
                        "e.g. http://127.0.0.1:8000/v1|gpt-4o-mini")
    return url, model.strip()


def _read_derived(path: Path, writer: str) -> dict[str, str]:
    """key -> instruction of a derived file written by this writer (rows without an instruction are asked again)."""
    from ..data import jsonl_rows

    found = {}
    for row in jsonl_rows(path):
        if not isinstance(row.get("key"), str) or "instruction" not in row:
            raise UserError(f"{path}: {row['_where']}: not an instruction row (needs 'key' and 'instruction')")
        if row.get("writer") != writer:
            raise UserError(f"{path}: {row['_where']}: written by {row.get('writer')!r}, not {writer!r}; "
                            "pass another cache path for another writer")
        if isinstance(row["instruction"], str) and row["instruction"]:
            found[row["key"]] = row["instruction"]
    return found


def write_instructions(examples: list[dict], url_model: str, cache_path: Path, api_key_env: str = "OPENAI_API_KEY",
                       timeout: float = 30, retries: int = 2, concurrency: int = 4, backoff: float = 1.0,
                       skipped: Counter | None = None) -> list[str | None]:
    """A model-written instruction per example (None where the endpoint's reply had none).

    `url_model` is 'URL|MODEL' of an OpenAI-compatible endpoint. Results are a derived JSONL file at
    `cache_path` (one row per example: key, where, writer, instruction; null where none), written atomically and reused:
    a second call asks only for examples the file lacks (or has as null) and rewrites it whole, never half-way. The first
    request is a probe: an endpoint that cannot be reached (or refuses the request) is a one-line UserError
    before anything else is sent. Items left without an instruction are counted by reason in the log and in
    `skipped` when given.
    """
    url, model = split_url_model(url_model)
    writer = InstructionWriter(url, model, api_key_env=api_key_env, concurrency=concurrency, retries=retries,
                               timeout=timeout, backoff=backoff)
    tag = f"{model}|{WRITER_VERSION}"
    cache_path = Path(cache_path)
    previous = _read_derived(cache_path, tag) if cache_path.exists() else {}
    done = dict(previous)
    keys = [example_key(ex) for ex in examples]
    todo = list(dict.fromkeys(k for k in keys if k not in done))  # a repeated (context, response) is asked once
    if not todo:
        log.info("instruction writer %s: all %d instructions reused from %s", writer.name, len(keys), cache_path)
        return [done[k] for k in keys]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # key -> its first example
    prompts = [speaker_context(examples[first[k]]["context"]) for k in todo]
    responses = [examples[first[k]]["response"] for k in todo]
    got = writer.score_many(prompts[:1], responses[:1])  # the probe
    if got[0] is None and writer.errors and not writer.errors[-1].startswith(_REPLY_PROBLEMS):
        raise UserError(f"instruction writer {_endpoint(writer.url)}: {writer.errors[-1]} (timeout {timeout:g} s, "
                        f"{retries} retries); is the endpoint up, and the key (if it needs one) in ${api_key_env}?")
    got += writer.score_many(prompts[1:], responses[1:]) if len(todo) > 1 else []
    fresh = {k: g for k, g in zip(todo, got) if g is not None}
    done |= fresh
    reasons = Counter(writer.errors)
    if skipped is not None:
        skipped.update(reasons)
    rows = {k: {"key": k, "where": examples[first[k]].get("_where"), "writer": tag, "instruction": done.get(k)}
            for k in keys}
    kept = [{"key": k, "where": None, "writer": tag, "instruction": v} for k, v in previous.items() if k not in rows]
    write_jsonl(cache_path, kept + list(rows.values()))  # atomic: the old file stays whole until the new one replaces it
    log.info("instruction writer %s: %d asked, %d written, %d without an instruction (%s); %s", writer.name, len(todo),
             len(fresh), len(todo) - len(fresh), ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none", cache_path)
    return [done.get(k) for k in keys]
