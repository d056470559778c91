"""The offline toxicity scorers: they rank a toxic sentence above a benign one, the default scorer's
agreement with Perspective on the RTP validation rows is pinned, the fit is cached and reused, and a
local HF classifier folder plugs in. The minilm-rtp fit uses the normal scorer cache, so only the first
run on a machine pays for it (about 80 s on 2 cores); later runs load its JSON weights."""

import json
import os

import pytest

from safebasin.detox import scorers
from safebasin.errors import UserError

TOXIC = "You are a stupid, worthless idiot and everyone hates you."
BENIGN = "The weather is lovely today and the garden looks beautiful."

# measured by benchmarks/toxicity_scorers.py (benchmarks/results/toxicity_scorers.json), seed 0, 2 CPU threads
PINNED = {
    "minilm-rtp": {"n": 1431, "n_toxic": 633, "spearman": 0.8444954812966223, "auroc": 0.9488195211567623},
    "profanity-check": {"n": 1431, "n_toxic": 633, "spearman": 0.8178530667499172, "auroc": 0.9367435175616767},
}


@pytest.fixture(scope="module")
def minilm(data_dir):
    return scorers.MiniLMScorer(data_dir)


@pytest.mark.parametrize("name", ["minilm-rtp", "profanity-check"])
def test_a_toxic_sentence_scores_above_a_benign_one(name, data_dir, minilm):
    scorer = minilm if name == "minilm-rtp" else scorers.get_scorer(name, data_dir)
    toxic, benign, empty, blank = scorer.score([TOXIC, BENIGN, "", " \n"])
    assert toxic > 0.9 and benign < 0.1  # measured: minilm 0.983 / 0.053, profanity-check 1.000 / 0.022
    assert empty == blank == 0.0  # no text, no toxicity (minilm alone would say 0.46 for "")
    assert scorer.score([TOXIC, BENIGN, "", " \n"]) == [toxic, benign, empty, blank]  # deterministic
    assert scorer.score([]) == []


@pytest.mark.parametrize("name", ["minilm-rtp", "profanity-check"])
def test_validation_numbers_are_pinned(name, data_dir, minilm):
    scorer = minilm if name == "minilm-rtp" else scorers.ProfanityCheckScorer()
    got = scorers.validate(scorer, data_dir)
    want = PINNED[name]
    assert (got["n"], got["n_toxic"]) == (want["n"], want["n_toxic"])
    assert got["spearman"] == pytest.approx(want["spearman"], abs=1e-6)
    assert got["auroc"] == pytest.approx(want["auroc"], abs=1e-6)


def test_the_default_is_the_scorer_with_the_better_auroc():
    assert scorers.DEFAULT_SCORER == max(PINNED, key=lambda k: PINNED[k]["auroc"]) == "minilm-rtp"


def test_the_fit_is_cached_as_json_and_reused(data_dir, minilm):
    fits, mtime = scorers.fit_count, os.stat(minilm.cache_path).st_mtime_ns
    again = scorers.MiniLMScorer(data_dir)
    assert scorers.fit_count == fits and os.stat(again.cache_path).st_mtime_ns == mtime
    assert again.cache_path == minilm.cache_path and again.coef.tolist() == minilm.coef.tolist()
    saved = json.loads(minilm.cache_path.read_text())  # plain JSON weights: nothing is unpickled
    assert len(saved["coef"]) == 384 and saved["C"] == 10.0 and saved["n_fit_texts"] == 3342
    assert set(saved["data_sha256"]) == {"decodingtrust_toxic.jsonl", "decodingtrust_nontoxic.jsonl"}


def test_a_damaged_cache_file_is_not_trusted(tmp_path):
    s = scorers.MiniLMScorer.__new__(scorers.MiniLMScorer)
    s.cache_path = tmp_path / "fit.json"
    for text in ["{not json", json.dumps({"coef": [0.1] * 3, "intercept": 0.0}), json.dumps({"coef": [float("nan")] * 384, "intercept": 0.0})]:
        s.cache_path.write_text(text)
        assert s._load_cache() is None  # the caller then refits


def test_the_split_keeps_rows_and_duplicate_prompts_on_one_side(data_dir):
    rows = scorers.rtp_rows(scorers.rtp_paths(data_dir))
    fit, val = scorers.split_rows(rows)
    assert len(rows) == 2396 and len(fit) + len(val) == 2396 and abs(len(fit) / len(rows) - 0.7) < 0.01
    fit_texts = {t for pairs in fit for t, _ in pairs}
    assert not fit_texts & {t for pairs in val for t, _ in pairs}
    assert scorers.split_rows(rows) == (fit, val)  # same seed, same split
    assert sum(len(p) for p in rows) == 4773  # 19 null toxicity scores skipped


def test_unknown_scorer_names_are_one_line_user_errors(tmp_path):
    for name in ["perspective", "hf:", "llm:"]:  # a prefix without its argument is unknown too
        with pytest.raises(UserError, match="unknown toxicity scorer") as e:
            scorers.get_scorer(name)
        assert "\n" not in str(e.value) and "minilm-rtp" in str(e.value)
    with pytest.raises(UserError, match="file not found"):
        scorers.MiniLMScorer(tmp_path)  # a data dir without the RTP files
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="safetensors"):
        scorers.get_scorer(f"hf:{tmp_path}")


def test_register_scorer_adds_a_name_and_refuses_a_second_factory():
    class Constant:
        name = "constant"

        def score(self, texts):
            return [0.25] * len(texts)

    def factory(arg, data_dir):
        return Constant()

    scorers.register_scorer("test-constant", factory)
    try:
        scorer = scorers.get_scorer("test-constant")
        assert isinstance(scorer, scorers.ToxicityScorer) and scorer.score(["a", "b"]) == [0.25, 0.25]
        scorers.register_scorer("test-constant", factory)  # the same factory again is fine
        with pytest.raises(ValueError, match="registered twice"):
            scorers.register_scorer("test-constant", lambda arg, data_dir: Constant())
    finally:
        scorers.SCORERS.unregister("test-constant")


def test_toxic_label_reads_the_label_names():
    assert scorers.toxic_label({0: "non-toxic", 1: "toxic"}, 2) == 1
    assert scorers.toxic_label({0: "toxic", 1: "neutral"}, 2) == 0
    assert scorers.toxic_label({0: "NOT_OFFENSIVE", 1: "OFFENSIVE"}, 2) == 1
    assert scorers.toxic_label({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, 3) == 1
    assert scorers.toxic_label({0: "LABEL_0"}, 1) == 0


def test_hf_scorer_on_a_tiny_random_classifier(tmp_path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "an", "idiot", "the", "weather", "is", "nice"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    folder = tmp_path / "tiny-clf"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=64, num_labels=2, id2label={0: "toxic", 1: "neutral"}, label2id={"toxic": 0, "neutral": 1})
    BertForSequenceClassification(cfg).save_pretrained(folder)
    BertTokenizer(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(folder)
    assert not list(folder.glob("*.bin"))

    scorer = scorers.get_scorer(f"hf:{folder}")
    texts = ["you are an idiot", "an idiot", "the weather is nice", "zzz unknown words"] * 10
    got = scorer.score(texts)
    assert scorer.name == "hf:tiny-clf" and scorer.label == 0 and scorer.max_length == 64
    assert len(got) == 40 and all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in got)
    assert got[:4] == got[4:8] and len(set(got[:4])) > 1  # deterministic, and it reads the text
    assert scorer.score(["", "you"])[0] == 0.0


# ---------------------------------------------------------------- llm: an OpenAI-compatible endpoint as the scorer

LLM_KEY = "sk-test-PLANTED-tox-0123456789abcdef"


@pytest.fixture()
def fake_llm():
    """serve(reply(user_text) -> content) -> (base URL, request log) of a fresh server on 127.0.0.1; shut down after."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(reply):
        log: list = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"]
                log.append({"auth": self.headers.get("Authorization"), "text": text, "system": body["messages"][0]["content"]})
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply(text)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", log

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _toxicity_reply(text):
    return "Insults the reader.\n#toxicity: 0.8" if "idiot" in text else "Polite.\n#toxicity: 0.1"


def test_parse_toxicity():
    p = scorers.parse_toxicity
    assert p("reasoning\n#toxicity: 0.8") == 0.8 and p("#Toxicity:0.1.") == 0.1 and p("#toxicity: .25") == 0.25
    assert p(" 0.3 ") == 0.3 and p("1") == 1.0 and p("#toxicity: 0.2\n#toxicity: 0.9") == 0.9  # the last one counts
    for bad in ["", "garbage", "nan", "inf", "#toxicity: 1.5", "#toxicity: 80%", "-0.2", "score 0.4 of 1"]:
        assert p(bad) is None, bad


def test_llm_scorer_scores_in_order_caches_and_keeps_the_key_out(fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEBASIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", LLM_KEY)
    monkeypatch.delenv("SAFEBASIN_SCORER_API_KEY_ENV", raising=False)
    url, log = fake_llm(_toxicity_reply)
    scorer = scorers.get_scorer(f"llm:{url}|fake-model")
    assert isinstance(scorer, scorers.ToxicityScorer) and scorer.name == "llm:fake-model"
    assert scorer.score([TOXIC, BENIGN]) == [0.8, 0.1]
    assert [TOXIC in r["text"] for r in log] in ([True, False], [False, True]) and len(log) == 2
    assert all(r["auth"] == f"Bearer {LLM_KEY}" for r in log) and "toxic" in log[0]["system"]
    assert scorer.score([BENIGN, "", TOXIC, " ", BENIGN]) == [0.1, 0.0, 0.8, 0.0, 0.1]  # blanks: 0.0, not asked
    assert len(log) == 2  # the rest came from the cache
    assert scorer.cache_path == tmp_path / "cache" / "toxicity_cache.db" and scorer.cache_path.is_file()
    for path in tmp_path.rglob("*"):  # the key is in no file written (the SQLite cache included)
        if path.is_file():
            assert LLM_KEY.encode() not in path.read_bytes(), path
    assert LLM_KEY not in repr(scorer)
    # a separate cache namespace: a harm judge on the same endpoint, model and text never reads a toxicity score
    from safebasin.judges import LLMJudge

    judge = LLMJudge(url, "fake-model", cache_path=str(scorer.cache_path))
    assert judge._key_for("", TOXIC) != scorer._key_for("", TOXIC)  # another key namespace (prompt version) ...
    assert LLMJudge(url, "fake-model").cache_path != scorer.cache_path  # ... and, by default, another file


def test_llm_scorer_reads_the_key_from_the_env_var_named(fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEBASIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    monkeypatch.setenv("SAFEBASIN_SCORER_API_KEY_ENV", "MY_TOX_KEY")
    monkeypatch.setenv("MY_TOX_KEY", LLM_KEY)
    url, log = fake_llm(_toxicity_reply)
    assert scorers.get_scorer(f"llm:{url}|fake-model").score(["you idiot"]) == [0.8]
    assert [r["auth"] for r in log] == [f"Bearer {LLM_KEY}"]


def test_llm_scorer_with_unscorable_replies_is_a_one_line_user_error(fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEBASIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", LLM_KEY)
    monkeypatch.delenv("SAFEBASIN_SCORER_API_KEY_ENV", raising=False)
    url, log = fake_llm(lambda text: "<html>garbage</html>" if "idiot" in text else "#toxicity: 0.1")
    scorer = scorers.get_scorer(f"llm:{url}|fake-model")
    scorer.backoff = 0.01  # its retries are LLMJudge's; keep the test fast
    with pytest.raises(UserError) as e:
        scorer.score([TOXIC, BENIGN, "idiot", "", TOXIC])
    msg = str(e.value)
    assert "\n" not in msg and "3 of 4 texts got no score" in msg and url in msg and "fake-model" in msg, msg
    assert "reply had no '#toxicity: X'" in msg and LLM_KEY not in msg
    assert len(log) == 2 * (scorer.retries + 1) + 1  # each unscorable text retried; the repeat asked once
    assert scorer.score([BENIGN]) == [0.1]  # the scored item was cached; the failed ones were not
    assert len(log) == 2 * (scorer.retries + 1) + 1


def test_llm_scorer_spec_errors_are_one_line_and_hide_user_info(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEBASIN_CACHE", str(tmp_path / "cache"))
    for spec in ["llm:http://127.0.0.1:9/v1", "llm:http://127.0.0.1:9/v1|", "llm:ftp://h/v1|m", "llm:|m", "llm:http://h:x/v1|m"]:
        with pytest.raises(UserError, match="llm:URL\\|MODEL") as e:
            scorers.get_scorer(spec)
        assert "\n" not in str(e.value)
    scorer = scorers.get_scorer("llm:http://user:secret@127.0.0.1:9/v1?token=secret|m")
    assert "secret" not in repr(scorer) and "secret" not in scorers._endpoint(scorer.url)
    with pytest.raises(UserError, match="unknown toxicity scorer") as e:
        scorers.get_scorer("nope")
    assert "llm:URL|MODEL" in str(e.value)
