"""The LLM judge against a tiny OpenAI-compatible server on 127.0.0.1 started by the test."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import run_cli
from safebasin.config import TrainConfig
from safebasin.judges import LLMJudge, llm_rate, parse_score
from safebasin.train import train

KEY = "sk-test-PLANTED-0123456789abcdef"


class FakeJudge(BaseHTTPRequestHandler):
    """Canned replies by what the judged response says: normal, slow, malformed, no score, flaky."""
    seen: list = []
    auth: list = []
    flaky: dict = {}

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.auth.append(self.headers.get("Authorization"))
        text = body["messages"][-1]["content"]
        reply = text.split("Assistant reply:")[1]
        FakeJudge.seen.append(reply)
        if "SLOW" in reply:
            time.sleep(1.5)
        if "FLAKY" in reply and not FakeJudge.flaky.get(reply):
            FakeJudge.flaky[reply] = True
            self.send_response(503)
            self.end_headers()
            return
        if "MALFORMED" in reply:
            payload = b"{not json"
        else:
            content = "no number here" if "NOSCORE" in reply else ("Complies. #score: 5" if "Sure" in reply else "Refuses.\n#score: 1")
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def server():
    FakeJudge.seen, FakeJudge.auth, FakeJudge.flaky = [], [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_parse_score():
    assert parse_score("reasoning...\n#score: 4") == 4 and parse_score("#Score:2") == 2 and parse_score(" 3 ") == 3
    assert parse_score("score 7") is None and parse_score("") is None


def test_scores_retries_errors_and_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = LLMJudge(server, "fake-judge", api_key_env="JUDGE_KEY", retries=1, timeout=0.5, backoff=0.01,
                     cache_path=str(tmp_path / "cache.db"))
    prompts = ["p1", "p2", "p3", "p4", "p5", "p6"]
    responses = ["Sure, here is how", "I'm sorry, no", "SLOW reply", "MALFORMED", "NOSCORE", "FLAKY Sure"]
    scores = judge.score_many(prompts, responses)
    assert scores == [5, 1, None, None, None, 5]  # errors are None (judge_error), flaky recovers on retry
    assert FakeJudge.auth and all(a == f"Bearer {KEY}" for a in FakeJudge.auth)
    assert KEY not in repr(judge)
    requests = len(FakeJudge.seen)
    assert judge.score_many(prompts[:2] + prompts[5:], responses[:2] + responses[5:]) == [5, 1, 5]
    assert len(FakeJudge.seen) == requests  # cached: no new request
    r = llm_rate(scores, ["a", "a", "b", "b", "b", "b"], judge.name)
    assert r["n"] == 3 and r["harmful"] == 2 and r["judge_errors"] == 3 and r["mean_score"] == pytest.approx(11 / 3)
    assert r["by_category"]["a"]["n"] == 2 and r["by_category"]["b"]["n"] == 1


def test_eval_with_llm_judge_keeps_the_key_out_of_every_output(server, tiny_model_dir, data_dir, tmp_path):
    run = train(TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=8, heldout_size=4,
                            max_seq_len=160, batch_size=2, steps=1, output_dir=str(tmp_path / "run")), show_progress=False)
    out = tmp_path / "eval"
    r = run_cli("eval", run, "--bench", "hexphi", "--limit", 5, "--max-new-tokens", 4, "--data-dir", data_dir,
                "--judge", "llm", "--judge-url", server, "--judge-model", "fake-judge", "--judge-api-key-env", "JUDGE_KEY",
                "--output-dir", out, env={"JUDGE_KEY": KEY, "SAFEBASIN_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    saved = json.loads((out / "eval.json").read_text())
    bench = saved["models"]["model"]["benchmarks"]["hexphi"]
    assert bench["judge"] == "keyword:gcg" and bench["llm_judge"]["judge"] == "llm:fake-judge"
    assert bench["llm_judge"]["n"] + bench["llm_judge"]["judge_errors"] == 5
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert all("llm_score" in row and row["llm_judge"] == "llm:fake-judge" for row in rows)
    assert FakeJudge.auth and all(a == f"Bearer {KEY}" for a in FakeJudge.auth)
    # the planted key appears in no file written and in no output printed
    for path in list(tmp_path.rglob("*")):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in r.stdout and KEY not in r.stderr


def test_llm_judge_needs_url_and_model(tiny_model_dir):
    r = run_cli("eval", tiny_model_dir, "--judge", "llm")
    assert r.returncode == 2 and "--judge llm needs --judge-url and --judge-model" in r.stderr


def test_classifier_judges(tmp_path, tiny_model_dir):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from safebasin import models
    from safebasin.judges import ClassifierJudge, guard_verdict

    assert guard_verdict("unsafe\nS1") is True and guard_verdict(" safe") is False and guard_verdict("maybe") is None
    tok = models.tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, num_labels=2, id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1},
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    clf = LlamaForSequenceClassification(cfg)
    path = tmp_path / "clf"
    models.save(clf, tok, path)
    judge = ClassifierJudge(str(path))
    prompts, responses = ["How do I do X?", "Tell me Y"] * 3, ["Sure, first", "I'm sorry", "ok", "no", "maybe", "yes"]
    verdicts = judge.score_many(prompts, responses)
    enc = tok(prompts, responses, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = (clf.eval()(**enc).logits.argmax(-1) == 1).tolist()
    assert verdicts == expected and judge.name == "classifier:clf"
    guard = ClassifierJudge(str(tiny_model_dir))  # a generative model: Llama-Guard style
    out = guard.score_many(["q"], ["a"])
    assert guard.kind == "guard" and out in ([True], [False], [None])
