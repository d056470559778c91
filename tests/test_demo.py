"""The demo pipeline end to end on a tiny random model, in seconds."""

import json
from html.parser import HTMLParser

import pytest

from safebasin import demo


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [a for a, _ in attrs]

    def handle_data(self, d):
        self.text.append(d)


@pytest.fixture(scope="module")
def demo_out(tiny_model_dir, data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SAFEBASIN_CACHE", str(cache))
    cfg = demo.demo_config("quick", overrides={
        "model": str(tiny_model_dir), "data_dir": str(data_dir), "prompts": 4, "max_new_tokens": 6, "rouge_prompts": 2,
        "heldout_size": 6, "max_seq_len": 96, "align_steps": 2, "align_batch_size": 2,
        "aggressive": {"lr": 1e-3, "batch_size": 2, "steps": 2, "ema_beta": 0.5},
        "careful": {"lr": 1e-4, "batch_size": 2, "grad_accum": 2, "steps": 1, "ema_beta": 0.5}})
    out = tmp_path_factory.mktemp("demo")
    summary = demo.run_demo(cfg, out, show_progress=False)
    yield out, summary, cache, cfg
    mp.undo()


def test_every_output_file_exists(demo_out):
    out, *_ = demo_out
    for name in ("summary.json", "tradeoff.png", "report.html", "generations.jsonl", "demo_config.yaml"):
        assert (out / name).is_file(), name


def test_summary_schema(demo_out):
    out, summary, _, cfg = demo_out
    saved = json.loads((out / "summary.json").read_text())
    assert saved["seed"] == cfg.seed and saved["benchmark"] == "advbench"
    assert list(saved["arms"]) == ["base", "aligned", "aggressive", "aggressive+ema", "careful", "careful+ema"]
    for name, arm in saved["arms"].items():
        assert {"config", "harmful_rate", "ci_low", "ci_high", "n", "judge", "heldout_loss", "perplexity", "rougeL"} <= set(arm)
        assert arm["n"] == 4 and 0 <= arm["ci_low"] <= arm["harmful_rate"] <= arm["ci_high"] <= 1
        assert arm["heldout_loss"] > 0 and 0 <= arm["rougeL"] <= 1
    assert saved["arms"]["aggressive+ema"]["config"]["ema_beta"] == 0.5
    assert saved["arms"]["aggressive"]["config"]["ema_beta"] is None
    assert saved["arms"]["careful"]["config"]["grad_accum"] == 2
    assert any("first 4 of 520" in s for s in saved["scaled_down"])


def test_png_is_a_valid_image(demo_out):
    out, *_ = demo_out
    from PIL import Image

    with Image.open(out / "tradeoff.png") as im:
        im.verify()
    with Image.open(out / "tradeoff.png") as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_aligned_model_is_cached_and_reused(demo_out, caplog):
    out, summary, cache, cfg = demo_out
    aligned = list((cache / "aligned").iterdir())
    assert len(aligned) == 1 and (aligned[0] / "model" / "model.safetensors").is_file()
    mtime = (aligned[0] / "model" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = demo.align(cfg, show_progress=False)
    assert again == aligned[0] and "cached" in caplog.text
    assert (aligned[0] / "model" / "model.safetensors").stat().st_mtime_ns == mtime


def test_html_escapes_a_planted_script(demo_out):
    out, summary, *_ = demo_out
    planted = [{"model": "aggressive", "prompt": "<img src=x onerror=alert(1)>", "response": "<script>alert('x')</script>",
                "harmful": True}]
    demo.write_report(out, summary, planted)
    page = (out / "report.html").read_text()
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags and "onerror" not in parser.attrs
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert any("<script>alert('x')</script>" in t for t in parser.text)  # shown as text
