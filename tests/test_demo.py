"""The demo pipeline end to end on a tiny random model, in seconds."""

import json
from html.parser import HTMLParser

import pytest
import torch

from safebasin.safety import demo


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
        "heldout_size": 6, "max_seq_len": 96, "over_refusal_prompts": 3, "panel_prompts": 2,
        "align": {"rows": 16, "batch_size": 2, "heldout_size": 4, "max_seq_len": 64, "warmup_steps": 0, "near_duplicate": 1.0},
        "aggressive": {"lr": 1e-3, "batch_size": 2, "steps": 2, "ema_beta": 0.5},
        "careful": {"lr": 1e-4, "batch_size": 2, "grad_accum": 2, "steps": 1, "ema_beta": 0.5}})
    out = tmp_path_factory.mktemp("demo")
    summary = demo.run_demo(cfg, out, show_progress=False)
    yield out, summary, cache, cfg
    mp.undo()


def test_every_output_file_exists(demo_out):
    out, *_ = demo_out
    for name in ("summary.json", "tradeoff.png", "loss_curves.png", "report.html", "generations.jsonl", "demo_config.yaml"):
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
    weights = aligned[0] / "run" / "model" / "model.safetensors"
    assert len(aligned) == 1 and weights.is_file()
    mtime = weights.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = demo.align(cfg, show_progress=False)
    assert again == aligned[0] and "cached" in caplog.text
    assert weights.stat().st_mtime_ns == mtime


def test_html_escapes_a_planted_script(demo_out):
    out, summary, *_ = demo_out
    planted = [{"model": "aggressive", "benchmark": "advbench", "index": 0, "prompt": "<img src=x onerror=alert(1)>",
                "response": "<script>alert('x')</script>", "harmful": True}]
    demo.write_report(out, summary, planted)
    page = (out / "report.html").read_text()
    parser = _Collect()
    parser.feed(page)
    assert parser.tags.count("script") == 1 and "onerror" not in parser.attrs  # the page's own sort/filter script only
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert any("<script>alert('x')</script>" in t for t in parser.text)  # shown as text


def test_summary_carries_the_story(demo_out):
    """Over-refusal, the loss CI over stored per-row losses, ROUGE-L's n, samples, changes against the aligned
    model and the plain run, flags per reply, recipes and provenance: what the report tells comes from here."""
    out, summary, _, cfg = demo_out
    saved = json.loads((out / "summary.json").read_text())
    assert saved["prompts"] == "first 4 rows"
    for name, arm in saved["arms"].items():
        assert arm["over_refusal"]["n"] == 3 and 0 <= arm["over_refusal"]["ci_low"] <= arm["over_refusal"]["rate"] <= arm["over_refusal"]["ci_high"] <= 1
        assert len(arm["heldout_row_losses"]) == len(arm["heldout_row_tokens"]) == arm["heldout_n"] > 0
        assert arm["heldout_ci"][0] <= arm["heldout_loss"] <= arm["heldout_ci"][1]
        assert arm["rougeL_n"] == 2 and len(arm["samples"]) == 2 and {"prompt", "response", "reference"} <= set(arm["samples"][0])
        assert 0 <= arm["degenerate_rate"] <= 1 and 0 <= arm["cut_rate"] <= 1 and arm["recipe"]
        assert arm["eval_precision"] == "float32 on cpu"
        if name != "aligned":
            assert {"harmful_rate", "over_refusal", "heldout_loss"} <= set(arm["vs_aligned"])
    for name in ("aggressive+ema", "careful+ema"):
        d = saved["arms"][name]["vs_plain"]["harmful_rate"]
        assert d["low"] <= d["diff"] <= d["high"]
    assert "same 4 Dolly rows" in saved["arms"]["aggressive"]["recipe"]  # 2 x 1 x 2 rows = 2 x 2 x 1 rows
    assert "the aggressive run itself" in saved["arms"]["aggressive+ema"]["recipe"]
    assert saved["table"]["columns"][0] == "arm" and [r[0] for r in saved["table"]["rows"]] == list(saved["arms"])
    assert {"training", "why", "evaluation"} <= set(saved["provenance"]["precision"])
    assert {"git commit", "CPU", "torch", "date"} <= set(saved["provenance"]["environment"])
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert sum(r["benchmark"] == "xstest" for r in rows) == 3 * 6 and sum(r["benchmark"] == "advbench" for r in rows) == 4 * 6
    assert all(isinstance(r["cut_at_limit"], bool) and isinstance(r["degenerate"], bool) for r in rows)


def test_heldout_rows_add_up_to_the_training_loss(tiny_model_dir, data_dir):
    """The one held-out loop (evaluate.heldout_rows, behind heldout_loss and the demo's CIs) is the masked loss that
    training minimises, whatever the batch size."""
    from safebasin import data, models
    from safebasin.evaluate import heldout_loss, heldout_rows

    model, tok = models.load(str(tiny_model_dir))
    cfg = demo.demo_config("quick", overrides={"model": str(tiny_model_dir), "data_dir": str(data_dir), "heldout_size": 5})
    _, heldout, _ = data.load_for_training(demo._train_cfg(cfg, model=cfg.model, data="dolly"))
    rows = heldout_rows(model, tok, heldout, 256, batch_size=2)
    encoded = data.tokenize(heldout, tok, 256, "held-out")  # a row whose reply is truncated away is not scored
    batch = data.collate(encoded, tok.pad_token_id)
    n = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        trained_on = float(model(**batch, num_items_in_batch=n).loss)
    assert len(rows) == len(encoded) >= 3 and sum(k for _, k in rows) == n
    assert sum(r for r, _ in rows) / n == pytest.approx(trained_on, rel=1e-5)
    assert heldout_loss(model, tok, heldout, 256)["heldout_loss"] == pytest.approx(trained_on, rel=1e-5)
    assert [k for _, k in heldout_rows(model, tok, heldout, 256, batch_size=5)] == [k for _, k in rows]


def test_report_is_shareable_and_complete(demo_out):
    """No absolute path of the run (model, data, cache, output) in the page; relative links to the files;
    the tables, grid and loss curves are there."""
    out, summary, *_ = demo_out
    demo.write_report(out, summary, [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()])
    page = (out / "report.html").read_text()

    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    paths = {s for s in strings(summary) if s.startswith("/")} | {str(out)}
    assert paths and not [p for p in paths if p in page]
    for link in ("summary.json", "generations.jsonl", "aligned/train_log.jsonl", "aligned_mix_manifest.json", "aggressive/train_log.jsonl",
                 "careful/train_log.jsonl"):
        assert f"href='{link}'" in page
    assert "name='viewport'" in page and "Training loss per run" in page and "Where the arms differ: AdvBench" in page
    assert "first N rows" not in page and "<td> x </td>" not in page  # the old placeholders: unfilled N, the base row's batch


def test_every_arm_is_scored_on_the_whole_panel_and_the_report_names_the_choosing_sets(demo_out):
    """AdvBench (first N) and XSTest (its fixed sample) stand in the panel for themselves; every other set is a
    seeded sample of panel_prompts, the same prompts for every arm; the table shows each half's worst set."""
    from safebasin.safety import panel

    out, summary, _, cfg = demo_out
    sizes = {"advbench": cfg.prompts, "xstest": cfg.over_refusal_prompts}
    prompts = {}
    for name, arm in summary["arms"].items():
        per_set = arm["panel"]["per_set"]
        assert set(per_set) == set(panel.HARMFUL + panel.BENIGN)
        assert all(v["n"] == sizes.get(n, cfg.panel_prompts) for n, v in per_set.items())
        rates = [v["rate"] for v in per_set.values() if v["kind"] == "harmful" and v["half"] == "check"]
        assert arm["panel"]["check"]["harmful"]["worst_rate"] == max(rates)
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    for g in gens:
        prompts.setdefault((g["benchmark"], g["index"]), set()).add(g["prompt"])
    assert all(len(p) == 1 for p in prompts.values())  # one prompt per (set, index) across the arms
    assert summary["panel"]["chose_recipes"] == ["advbench", "xstest"]
    cols = summary["table"]["columns"]
    assert "worst harmful panel set, check half ↓" in cols and "harmful macro mean, choose → check half" in cols
    row = summary["table"]["rows"][[r[0] for r in summary["table"]["rows"]].index("aligned")]
    check = summary["arms"]["aligned"]["panel"]["check"]["harmful"]
    assert row[cols.index("worst harmful panel set, check half ↓")].startswith(check["worst_set"])
    page = (out / "report.html").read_text()
    assert "The safety panel, set by set" in page and "recipes were chosen on advbench, xstest" in page


def test_the_cli_prints_every_scenarios_table_one_way(capsys, tmp_path):
    """No scenario is special to the CLI (issue #35): a summary's short `terminal` table if it has one, else its
    `table`, then its notes and the files it wrote."""
    from safebasin import cli

    def printed() -> str:
        got = capsys.readouterr()
        return " ".join((got.out + got.err).split())

    base = {"seed": 3, "timings_s": {"total": 12.0}, "table": {"columns": ["row", "F1"], "rows": [["SURGE", "0.3"]]}}
    cli.print_demo_table(base, "kg", tmp_path)
    text = printed()
    assert "demo kg, seed 3" in text and "SURGE" in text and f"report: {tmp_path / 'report.html'}" in text
    short = base | {"terminal": {"title": "AdvBench first 4", "columns": ["arm", "harm"], "rows": [["aligned", "8%"]],
                                 "notes": ["scaled down: [x]"], "outputs": ["report.html", "tradeoff.png"]}}
    cli.print_demo_table(short, "safety", tmp_path)
    text = printed()
    assert "AdvBench first 4" in text and "aligned" in text and "SURGE" not in text
    assert "scaled down: [x]" in text and f"tradeoff: {tmp_path / 'tradeoff.png'}" in text and "wall time 12 s" in text
