"""DailyDialog reading, turn examples, templated and model-written per-turn instructions (arXiv 2311.07006)."""

import json
import re
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import product

import pytest

from safebasin import data as core_data
from safebasin.dialogue.data import (ACTS, EMOTIONS, SKIP_REASONS, bench_rows, normalise, read_dailydialog, to_chat,
                                     training_rows, turn_examples)
from safebasin.dialogue.instructions import (idf_table, parse_instruction, parse_written, templated_instruction,
                                             write_instructions)
from safebasin.errors import UserError

NO_SKIPS = dict.fromkeys(SKIP_REASONS, 0)


# ---------------------------------------------------------------- the real data

def test_validation_split_reads_every_dialogue(data_dir):
    dialogues, skipped = read_dailydialog(data_dir / "dailydialog" / "validation")
    assert len(dialogues) == 1000 and skipped == NO_SKIPS
    first = dialogues[0]
    assert first["turns"] == ["Good morning, sir. Is there a bank near here?", "There is one. 5 blocks away from here?",
                              "Well, that's too far.Can you change some money for me?",
                              "Surely, of course. What kind of currency have you got?", "RIB.",
                              "How much would you like to change?", "1000 Yuan.Here you are."]
    assert first["acts"] == [2, 1, 3, 2, 1, 2, 1] and first["emotions"] == [0] * 7 and first["_where"] == "line 1"
    assert sum(len(d["turns"]) - 1 for d in dialogues) == 7069 == len(turn_examples(dialogues))


def test_training_split_skips_the_known_bad_dialogue(data_dir):
    dialogues, skipped = read_dailydialog(data_dir / "dailydialog" / "train")
    assert len(dialogues) == 11117 and skipped == NO_SKIPS | {"label_count": 1}  # 11,118 lines, one bad
    assert "line 7852" not in {d["_where"] for d in dialogues}  # 12 utterances, 11 act and emotion labels
    assert all(len(d["turns"]) == len(d["acts"]) == len(d["emotions"]) for d in dialogues)


def test_registered_set_and_bench(data_dir):
    bench, source = core_data.resolve_named("dailydialog", core_data.BENCH_SETS, str(data_dir))
    assert source.endswith("dialogues_validation.txt") and len(bench) == 7069
    assert bench[0] == {"prompt": "Good morning, sir. Is there a bank near here?",
                        "context": ["Good morning, sir. Is there a bank near here?"],
                        "response": "There is one. 5 blocks away from here?", "act": 1, "emotion": 0,
                        "act_name": "inform", "_where": "line 1, turn 1"}
    assert all(r["prompt"] == r["context"][-1] and 1 <= len(r["context"]) <= 3 for r in bench)
    spec = core_data.BENCH_SETS["dailydialog"]
    assert spec.kind == "dialogue" and spec.prompt_field == "prompt" and spec.category_field == "act_name"
    assert core_data.TRAIN_SETS["dailydialog"].file == "dailydialog/train/dialogues_train.txt"


# ---------------------------------------------------------------- a hand-made split

def _split(tmp_path, name, texts, acts, emotions):
    d = tmp_path / name
    d.mkdir()
    (d / f"dialogues_{name}.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    (d / f"dialogues_act_{name}.txt").write_text("".join(a + "\n" for a in acts))
    (d / f"dialogues_emotion_{name}.txt").write_text("".join(e + "\n" for e in emotions))
    return d


def test_bad_dialogues_are_skipped_and_counted_by_reason(tmp_path):
    d = _split(tmp_path, "mini", [
        "Hi , Tom . __eou__ Hello ! How ' s it going ? __eou__ ",            # good
        "One . __eou__ Two . __eou__ Three . __eou__ ",                      # 3 utterances, 2 acts
        "Where ? __eou__ There . __eou__ ",                                  # act 7
        "First . __eou__    __eou__ Third . __eou__ ",                       # an empty utterance
        "Happy ? __eou__ Very . __eou__ ",                                   # emotion 9
        "A . __eou__ B . __eou__ ",                                          # 2 acts, 1 emotion
        "It ’ s fine . __eou__ Good . __eou__",                              # good, no trailing separator
    ], ["1 2", "1 2", "2 7", "1 1 1", "2 1", "1 1", "1 4"], ["0 4", "0 0 0", "0 0", "0 0 0", "9 0", "0", "0 6"])
    dialogues, skipped = read_dailydialog(d)
    assert skipped == {"empty_dialogue": 0, "empty_utterance": 1, "label_count": 2, "unknown_act": 1, "unknown_emotion": 1}
    assert [x["_where"] for x in dialogues] == ["line 1", "line 7"]
    assert dialogues[0] == {"turns": ["Hi, Tom.", "Hello! How's it going?"], "acts": [1, 2], "emotions": [0, 4],
                            "_where": "line 1"}
    assert dialogues[1]["turns"] == ["It’s fine.", "Good."] and dialogues[1]["emotions"] == [0, 6]
    assert normalise("  Oh , no ! Is it ? Yes . I ' m sure  ") == "Oh, no! Is it? Yes. I'm sure"


def test_missing_file_and_misaligned_files_are_one_line_errors(tmp_path):
    d = _split(tmp_path, "validation", ["A . __eou__ B . __eou__", "C . __eou__ D . __eou__"], ["1 1"], ["0 0", "0 0"])
    with pytest.raises(UserError) as e:
        read_dailydialog(d)
    assert "dialogues_act_validation.txt: 1 lines, but dialogues_validation.txt has 2" in str(e.value)
    assert "\n" not in str(e.value)
    (d / "dialogues_emotion_validation.txt").unlink()
    with pytest.raises(UserError, match=r"dialogues_emotion_validation.txt: file not found$"):
        read_dailydialog(d)


def test_window_examples_chat_and_training_rows():
    turns = [f"t{i}" for i in range(6)]
    dialogues = [{"turns": turns, "acts": [1, 2, 3, 4, 1, 2], "emotions": [0, 1, 2, 3, 4, 5], "_where": "line 9"}]
    ex = turn_examples(dialogues, window=3)
    assert [len(e["context"]) for e in ex] == [1, 2, 3, 3, 3] and [e["turn"] for e in ex] == [1, 2, 3, 4, 5]
    assert ex[3]["context"] == ["t1", "t2", "t3"] and ex[3]["response"] == "t4" and ex[3]["act"] == 1 and ex[3]["emotion"] == 4
    assert ex[3]["dialogue"] == 0 and ex[3]["_where"] == "line 9, turn 4"
    assert [len(e["context"]) for e in turn_examples(dialogues, window=2, min_context=2)] == [2, 2, 2, 2]
    assert [len(e["context"]) for e in turn_examples(dialogues, window=10)] == [1, 2, 3, 4, 5]
    # an even context would open with the assistant, which strict templates (Mistral, Gemma) refuse: its first turn goes
    assert to_chat(ex[1]) == [{"role": "user", "content": "t1"}]
    assert to_chat(ex[3])[0] == {"role": "user", "content": "t1"} and len(to_chat(ex[3])) == 3
    assert to_chat(ex[2], system="Be kind.") == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "t0"},
                                                 {"role": "assistant", "content": "t1"}, {"role": "user", "content": "t2"}]
    row = training_rows(ex)[0]
    assert row == {"messages": [{"role": "user", "content": "t0"}, {"role": "assistant", "content": "t1"}],
                   "meta": {"act": 2, "emotion": 1, "response": "t1", "context": ["t0"]}, "_where": "line 9, turn 1"}
    assert core_data.detect_format(row, "x") == "messages"
    assert bench_rows(ex)[4]["act_name"] == "question" and bench_rows(ex)[4]["prompt"] == "t4"


# ---------------------------------------------------------------- templated instructions

def _ex(context, response, act, emotion):
    return {"context": context, "response": response, "act": act, "emotion": emotion}


def test_templated_instructions():
    bank = _ex(["Good morning, sir. Is there a bank near here?"], "There is one bank. 5 blocks away, near the post office.", 1, 0)
    idf = idf_table(["the post office is closed", "two blocks away", "an office", "the office", "away we go"])
    # "blocks" and "post" tie (each in one text): the response's order decides
    assert templated_instruction(bank, idf=idf) == 'Share information or an opinion, mentioning "blocks" and "post".'
    assert templated_instruction(bank) == 'Share information or an opinion, mentioning "blocks" and "away".'  # no idf: in order
    assert templated_instruction(bank, n_keywords=3, idf=idf) == \
        'Share information or an opinion, mentioning "blocks", "post" and "away".'
    angry = _ex(["Did you take my car?"], "Why on earth would you leave it unlocked?", 2, 1)
    assert templated_instruction(angry, n_keywords=1) == 'Ask a question in an angry tone, mentioning "earth".'
    assert templated_instruction(angry, level={"act"}) == "Ask a question."
    assert templated_instruction(angry, level={"emotion"}) == "Respond in an angry tone."
    assert templated_instruction(angry, level=set()) == "Respond."
    happy = _ex(["Shall we dance?"], "Sure, let's dance!", 4, 4)  # nothing new to mention
    assert templated_instruction(happy) == "Accept, refuse or promise something in a happy tone."
    assert templated_instruction(_ex(["Hi."], "Please sit down on the sofa.", 3, 3)) == \
        'Make a suggestion or request in a worried tone, mentioning "sit" and "sofa".'  # "down" is a stopword
    assert templated_instruction(angry) == templated_instruction(dict(angry))  # deterministic
    with pytest.raises(UserError, match="unknown instruction level"):
        templated_instruction(angry, level={"topic"})


def test_parse_instruction_inverts_the_template_for_every_act_and_emotion():
    # key words that look like act phrases or tone words are quoted, so they never count
    ex = _ex(["Hello there."], "I am angry you would ask a question so sadly.", 1, 0)
    for act, emotion in product(ACTS, EMOTIONS):
        for level in ({"act", "emotion", "keywords"}, {"act", "emotion"}):
            text = templated_instruction(ex | {"act": act, "emotion": emotion}, level=level, n_keywords=3)
            assert parse_instruction(text) == {"act": act, "emotion": emotion}, text
    assert parse_instruction("Respond in a sad tone.") == {"act": None, "emotion": 5}
    assert parse_instruction('Share information or an opinion, mentioning "angry".') == {"act": 1, "emotion": 0}
    assert parse_instruction("Ask them angrily where the car is") == {"act": 2, "emotion": 1}
    assert parse_instruction("") == {"act": None, "emotion": 0}


# ---------------------------------------------------------------- model-written instructions

KEY = "sk-test-DIALOGUE-0123456789"


class FakeWriter(BaseHTTPRequestHandler):
    """Answers by the reply it is shown: an instruction, or (for UNPARSABLE) prose without one."""
    seen: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        FakeWriter.seen.append((text, self.headers.get("Authorization")))
        reply = text.split("Next reply (by B):")[1]
        if "UNPARSABLE" in reply:
            content = "I would rather not say."
        else:
            what = "money" if "money" in reply else "time"
            content = f"B wants money changed.\n**Instruction:** \"Ask how much {what} A needs.\""
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def writer_url():
    FakeWriter.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeWriter)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_parse_written():
    assert parse_written("reasoning\nInstruction: Ask about the price.") == "Ask about the price."
    assert parse_written("Instruction: old\nthinking\n- instruction : \"Greet them.\"  ") == "Greet them."
    assert parse_written("no instruction here") is None and parse_written("Instruction:   ") is None


def test_model_written_instructions_are_stored_and_reused(writer_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEBASIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WRITER_KEY", KEY)
    examples = [_ex(["Can you change some money for me?"], "How much money would you like?", 2, 0) | {"_where": "line 1, turn 1"},
                _ex(["Hi.", "Hello, how are you?"], "UNPARSABLE reply", 1, 0) | {"_where": "line 2, turn 2"},
                _ex(["When do we leave?"], "Whenever you like.", 1, 0) | {"_where": "line 3, turn 1"}]
    out = tmp_path / "derived" / "instructions.jsonl"
    skipped: Counter = Counter()
    got = write_instructions(examples, f"{writer_url}|fake-writer", out, api_key_env="WRITER_KEY", retries=0, skipped=skipped)
    assert got == ["Ask how much money A needs.", None, "Ask how much time A needs."]
    assert skipped == Counter({"reply had no 'Instruction: ...' line": 1})
    assert len(FakeWriter.seen) == 3 and all(auth == f"Bearer {KEY}" for _, auth in FakeWriter.seen)
    shown = next(text for text, _ in FakeWriter.seen if "UNPARSABLE" in text)
    assert "B: Hi.\nA: Hello, how are you?" in shown  # the last context turn is A's; the reply is B's
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["where"], r["writer"], r["instruction"]) for r in rows] == [
        ("line 1, turn 1", "fake-writer|v1", "Ask how much money A needs."), ("line 2, turn 2", "fake-writer|v1", None),
        ("line 3, turn 1", "fake-writer|v1", "Ask how much time A needs.")]
    assert KEY not in out.read_text() and not list(out.parent.glob(".*.tmp"))
    for db in (tmp_path / "cache").glob("*.db"):  # the derived file alone must be enough
        db.unlink()
    good = [examples[0], examples[2]]
    assert write_instructions(good, f"{writer_url}|fake-writer", out, api_key_env="WRITER_KEY") == \
        ["Ask how much money A needs.", "Ask how much time A needs."]
    assert len(FakeWriter.seen) == 3  # reused: no request
    write_instructions(examples, f"{writer_url}|fake-writer", out, api_key_env="WRITER_KEY", retries=0)
    assert len(FakeWriter.seen) == 4 and "UNPARSABLE" in FakeWriter.seen[-1][0]  # only the missing one is asked again
    assert len(out.read_text().splitlines()) == 3
    with pytest.raises(UserError, match=re.escape("written by 'fake-writer|v1', not 'other|v1'")):
        write_instructions(good, f"{writer_url}|other", out, api_key_env="WRITER_KEY")


def test_unreachable_writer_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEBASIN_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:  # a port that was free a moment ago and is closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    examples = [_ex(["Hi."], f"Hello {i}.", 1, 0) for i in range(20)]
    out = tmp_path / "instructions.jsonl"
    with pytest.raises(UserError) as e:
        write_instructions(examples, f"http://127.0.0.1:{port}/v1|fake-writer", out, retries=1, timeout=2, backoff=0.01)
    message = str(e.value)
    assert message.startswith(f"instruction writer http://127.0.0.1:{port}/v1/chat/completions: URLError") and "\n" not in message
    assert not out.exists()
    with pytest.raises(UserError, match=re.escape("expected URL|MODEL")):
        write_instructions(examples, "127.0.0.1:8000", out)
