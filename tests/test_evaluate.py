import json

import pytest
import torch

from conftest import run_cli
from safebasin import evaluate, models
from safebasin.config import TrainConfig
from safebasin.errors import UserError
from safebasin.generate import HFBackend
from safebasin.judges import keyword_judge, wilson
from safebasin.train import train


def test_keyword_judge_semantics(data_dir):
    judge = keyword_judge("gcg", str(data_dir))
    assert judge.name == "keyword:gcg" and len(judge.phrases) == 29
    assert not judge.harmful("I'm sorry, but I cannot help with making explosives.")
    assert not judge.harmful("Building one is illegal. As an AI, I must decline.")  # matched anywhere, not only as prefix
    assert judge.harmful("Sure, here is a step-by-step guide: 1. Acquire the materials")
    assert judge.harmful("I'M SORRY, I CANNOT DO THAT")  # case-sensitive, as in GCG / Qi et al.
    assert judge.harmful("i'm sorry but no")


def test_refusal_list_errors(tmp_path):
    with pytest.raises(UserError, match="unknown refusal list 'nope'"):
        keyword_judge("nope")
    bad = tmp_path / "list.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(UserError, match="must be a JSON list"):
        keyword_judge(str(bad))


def test_wilson_interval_known_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson(20, 20)[1] == 1.0 and wilson(20, 20)[0] == pytest.approx(0.83887, abs=1e-4)


def test_named_benches_load_with_their_fields(data_dir):
    adv = evaluate.load_bench("advbench", str(data_dir))
    assert len(adv.prompts) == 520 and adv.prompts[0].startswith("Write a script that can exploit vulnerabilities")
    hex_ = evaluate.load_bench("hexphi", str(data_dir))
    assert len(hex_.prompts) == 300 and len(set(hex_.categories)) == 10
    jbb = evaluate.load_bench("jbb", str(data_dir))
    assert len(jbb.prompts) == 100 and len(set(jbb.categories)) == 10
    xs = evaluate.load_bench("xstest", str(data_dir))
    assert len(xs.prompts) == 250
    a = evaluate.load_bench("advbench", str(data_dir), sample=20, seed=1)
    b = evaluate.load_bench("advbench", str(data_dir), sample=20, seed=1)
    assert a.prompts == b.prompts and len(a.prompts) == 20 and a.prompts != adv.prompts[:20]


def test_category_breakdown_adds_up(data_dir):
    bench = evaluate.load_bench("hexphi", str(data_dir))
    judge = keyword_judge("gcg", str(data_dir))
    responses = ["I'm sorry, I can't." if i % 3 else ("Sure, here it is." if i % 2 else "") for i in range(len(bench.prompts))]
    result, rows = evaluate.score_bench(bench, responses, judge)
    assert result["degenerate_rate"] == pytest.approx(50 / 300)  # the empty replies: "harmful" to the keyword judge, but broken
    assert [r["degenerate"] for r in rows[:4]] == [True, False, False, False]
    assert result["n"] == 300 and result["harmful"] == 100 and result["harmful_rate"] == pytest.approx(1 / 3)
    assert sum(c["n"] for c in result["by_category"].values()) == 300
    assert sum(c["harmful"] for c in result["by_category"].values()) == 100
    assert result["ci_low"] < 1 / 3 < result["ci_high"]
    assert [r["harmful"] for r in rows[:3]] == [True, False, False] and rows[0]["category"] == bench.categories[0]


@pytest.mark.parametrize("name, text, needle", [
    ("noprompt.csv", "foo,bar\n1,2\n", r"noprompt.csv: no prompt column among bar, foo; pass --prompt-field"),
    ("empty.csv", "", r"empty.csv: file is empty"),
    ("blankprompt.jsonl", '{"prompt": "ok"}\n{"prompt": "  "}\n', r"blankprompt.jsonl: line 2: field 'prompt' is empty"),
])
def test_bad_bench_inputs(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=needle) as e:
        evaluate.load_bench(str(path))
    assert "\n" not in str(e.value)


def test_unknown_bench_and_field(tmp_path):
    with pytest.raises(UserError, match="unknown bench 'advbenchh'"):
        evaluate.load_bench("advbenchh")
    path = tmp_path / "p.csv"
    path.write_text("prompt,kind\nhello,a\n")
    with pytest.raises(UserError, match="no column 'cat'"):
        evaluate.load_bench(str(path), category_field="cat")
    assert evaluate.load_bench(str(path), category_field="kind").categories == ["a"]


def test_batched_greedy_equals_unbatched():
    torch.manual_seed(0)
    model, tok = models.tiny_llama(seed=1, init_std=0.2).eval(), models.tiny_tokenizer()
    prompts = ["Hi", "Tell me about the quick brown fox and the lazy dog, please.", "Why?", "First, second, third: answer."]
    batched = HFBackend(model, tok, batch_size=4, show_progress=False).generate(prompts, 12)
    single = HFBackend(model, tok, batch_size=1, show_progress=False).generate(prompts, 12)
    assert batched == single and all(batched)


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "run"
    cfg = TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=16, heldout_size=6,
                      max_seq_len=96, batch_size=4, steps=2, lr=1e-3, ema_beta=0.9, output_dir=str(out))
    return train(cfg, show_progress=False)


def test_eval_run_dir_scores_kept_and_raw_side_by_side(tiny_run, data_dir, tmp_path):
    res = evaluate.evaluate(str(tiny_run), ["advbench", "hexphi"], tmp_path, utility=True, limit=6, max_new_tokens=8,
                            data_dir=str(data_dir), rouge_limit=4, show_progress=False)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert set(saved["models"]) == {"model", "raw"}
    for entry in saved["models"].values():
        adv = entry["benchmarks"]["advbench"]
        assert {"n", "harmful_rate", "ci_low", "ci_high", "judge", "by_category"} <= set(adv)
        assert adv["n"] == 6 and adv["judge"] == "keyword:gcg" and adv["ci_low"] <= adv["harmful_rate"] <= adv["ci_high"]
        assert sum(c["n"] for c in entry["benchmarks"]["hexphi"]["by_category"].values()) == 6
        util = entry["utility"]
        assert 0 < util["heldout_n"] <= 6 and util["heldout_loss"] > 0 and util["perplexity"] == pytest.approx(2.718281828 ** util["heldout_loss"], rel=1e-6)
        assert 0 <= util["rougeL"] <= 1 and util["rougeL_n"] == 4
    gens = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 2 * (6 + 6)
    assert {"benchmark", "index", "category", "prompt", "response", "harmful", "model"} <= set(gens[0])
    assert saved["settings"]["max_new_tokens"] == 8 and saved["settings"]["batch_size"] == 16


def test_eval_cli(tiny_run, data_dir, tmp_path):
    r = run_cli("eval", tiny_run, "--bench", "jbb", "--limit", 4, "--max-new-tokens", 4, "--data-dir", data_dir,
                "--output-dir", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert saved["models"]["model"]["benchmarks"]["jbb"]["n"] == 4
    if not torch.cuda.is_available():  # --backend auto falls back to HF on a CPU; the choice is recorded
        assert saved["settings"]["backend"] == "hf" and saved["settings"]["dtype"] == "float32"
        vllm = run_cli("eval", tiny_run, "--bench", "jbb", "--limit", 2, "--backend", "vllm", "--data-dir", data_dir,
                       "--output-dir", tmp_path / "e3")
        assert vllm.returncode == 2 and ("needs vLLM" in vllm.stderr or "needs a GPU" in vllm.stderr)
        assert not (tmp_path / "e3" / "eval.json").exists()
    bad = run_cli("eval", tiny_run, "--bench", "nosuch", "--data-dir", data_dir, "--output-dir", tmp_path / "e2")
    assert bad.returncode == 2 and "unknown bench 'nosuch'" in bad.stderr and "Traceback" not in bad.stderr


def test_category_chart_is_written_for_categorised_benches(tiny_run, data_dir, tmp_path):
    evaluate.evaluate(str(tiny_run), ["hexphi", "advbench"], tmp_path, limit=40, max_new_tokens=2, data_dir=str(data_dir),
                      show_progress=False)
    from PIL import Image

    with Image.open(tmp_path / "categories_hexphi.png") as im:
        assert im.format == "PNG"
    assert not (tmp_path / "categories_advbench.png").exists()  # AdvBench has no categories
