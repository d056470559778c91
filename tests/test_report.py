"""The demo report tells the story from the numbers, shows where the arms differ, and stays safe to open:
strict CSP (hashes, no 'unsafe-inline'), everything escaped, no machine paths. No model is trained here:
summaries are built from made-up verdicts by the demo's own make_summary."""

import base64
import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from safebasin import judges, report
from safebasin.safety import demo
from safebasin.judges import rate

ARMS = ["base", "aligned", "aggressive", "aggressive+ema", "careful", "careful+ema"]
PATHS = {"model": "/secret/home/me/models/smol", "aligned": "/secret/cache/aligned/abc/model",
         "source": "/secret/data/advbench/harmful_behaviors.csv", "out": "/secret/runs/demo"}


class Page(HTMLParser):
    """Tags, attributes, text, and the bodies of <script>/<style> elements, as a browser parses them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.attrs, self.text, self.scripts, self.styles, self._in = [], [], [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, d):
        if self._in == "script":
            self.scripts.append(d)
        elif self._in == "style":
            self.styles.append(d)
        else:
            self.text.append(d)


def make(verdicts: dict[str, list[bool]], losses: dict[str, float], over: dict[str, list[bool]] | None = None,
         responses: dict[tuple[str, int], str] | None = None) -> tuple[dict, list[dict]]:
    """A summary and generations from per-arm AdvBench verdicts (True = no refusal phrase) and mean held-out losses."""
    n = len(verdicts["aligned"])
    over = over or {a: [False] * 4 for a in ARMS}
    cfg = demo.demo_config("quick", overrides={"model": PATHS["model"], "prompts": n, "over_refusal_prompts": 4,
                                               "rouge_prompts": 2, "heldout_size": 30})
    generations, results, configs = [], {}, {}
    for arm in ARMS:
        for i, harmful in enumerate(verdicts[arm]):
            text = (responses or {}).get((arm, i), "Sure, here is how." if harmful else "I'm sorry, I cannot help.")
            generations.append({"model": arm, "benchmark": "advbench", "index": i, "category": None,
                                "prompt": f"harmful prompt {i}", "response": text, "harmful": harmful,
                                "judge": "keyword:gcg", "degenerate": demo.degenerate(text), "cut_at_limit": harmful})
        for i, refused in enumerate(over[arm]):
            generations.append({"model": arm, "benchmark": "xstest", "index": i, "category": "homonyms",
                                "prompt": f"safe prompt {i}", "response": "I cannot." if refused else "Here you go.",
                                "harmful": not refused, "judge": "keyword:gcg", "degenerate": False, "cut_at_limit": False})
        adv = rate(verdicts[arm]) | {"judge": "keyword:gcg"}
        x = rate([not r for r in over[arm]])
        rows = [losses[arm] + 0.02 * ((i % 5) - 2) for i in range(30)]  # row losses spread around the arm's mean
        results[arm] = {"benchmarks": {"advbench": adv, "xstest": x | {"refusal_rate": 1 - x["harmful_rate"]}},
                        "utility": {"heldout_loss": sum(rows) / 30, "perplexity": 10.0, "rougeL": 0.2, "rougeL_n": 2,
                                    "heldout_n": 30, "heldout_row_losses": rows, "heldout_row_tokens": [10] * 30,
                                    "samples": [{"prompt": "Name a colour.", "response": "Blue.", "reference": "Red."}]},
                        "eval_precision": "float32 on cpu"}
        configs[arm] = {"model": PATHS["model"]} if arm == "base" else {
            "model": PATHS["aligned"], "output_dir": f"{PATHS['out']}/{arm}", "lr": 2e-5 if "careful" in arm else 2e-4,
            "batch_size": 4, "grad_accum": 1, "steps": 3, "mixed_precision": "no",
            "ema_beta": 0.9 if arm.endswith("+ema") else None}
    summary = demo.make_summary(cfg, results, configs, {"total": 12.0}, PATHS["source"], generations)
    return summary, generations


def render(tmp_path, summary, generations) -> str:
    demo.write_report(tmp_path, summary, generations)
    return (tmp_path / "report.html").read_text()


N = 20
ALL = [True] * N
NONE = [False] * N
EMA_ANSWERED = (0, 3, 7, 11, 15)
LOSS = {"base": 2.8, "aligned": 2.85, "aggressive": 2.6, "aggressive+ema": 2.6, "careful": 2.65, "careful+ema": 2.75}


@pytest.fixture(scope="module")
def ema_helps():
    """aggressive complies with everything, its EMA average with 5 prompts, careful with none."""
    ema = [i in EMA_ANSWERED for i in range(N)]
    return make({"base": ALL, "aligned": NONE, "aggressive": ALL, "aggressive+ema": ema, "careful": NONE,
                 "careful+ema": NONE}, LOSS)


@pytest.fixture(scope="module")
def ema_useless():
    """Both aggressive arms comply with everything; nothing else differs."""
    return make({"base": ALL, "aligned": NONE, "aggressive": ALL, "aggressive+ema": ALL, "careful": NONE,
                 "careful+ema": NONE}, LOSS)


def test_the_conclusion_changes_with_the_numbers(ema_helps, ema_useless, tmp_path):
    helps, useless = demo.conclusions(ema_helps[0]), demo.conclusions(ema_useless[0])
    assert helps != useless
    assert any(c.startswith("EMA lowered the no-refusal rate of the aggressive run (100.0% → 25.0%") and "excludes 0" in c
               for c in helps)
    assert any(c.startswith("EMA did not measurably change the no-refusal rate of the aggressive run") for c in useless)
    lost = next(c for c in helps if c.startswith("Lost safety"))
    assert "aggressive 100.0%" in lost and "aggressive+ema 25.0%" in lost and "careful" not in lost
    assert "aggressive+ema" in next(c for c in useless if c.startswith("Lost safety"))
    assert next(c for c in helps if c.startswith("Learned the task")).endswith("careful, careful+ema.")
    page = render(tmp_path, *ema_helps)
    assert "EMA lowered the no-refusal rate of the aggressive run" in page


def test_no_arm_lost_safety_is_said_so():
    summary, _ = make({a: NONE for a in ARMS}, LOSS)
    text = " ".join(demo.conclusions(summary))
    assert "No arm lost safety measurably" in text and "Lost safety" not in text
    assert "Learned without a measurable safety loss or more over-refusal than the aligned model: aggressive, aggressive+ema, careful, careful+ema; they still refuse" in text


def test_over_refusal_and_degenerate_replies_reach_the_conclusion():
    refuses = {a: [False] * 4 for a in ARMS} | {"careful+ema": [True] * 4}
    summary, _ = make({a: NONE for a in ARMS} | {"aggressive": ALL}, LOSS, over=refuses,
                      responses={("aggressive", 3): "", ("aggressive", 4): "la la la la la la"})
    text = " ".join(demo.conclusions(summary))
    assert "careful+ema 100.0%" in text and "refuse more safe prompts than the aligned model (CI above 0): careful+ema" in text
    assert ("Learned without a measurable safety loss or more over-refusal than the aligned model: aggressive+ema, careful; "
            "they still refuse 0.0%, 0.0% of the XSTest safe prompts (aligned 0.0%).") in text  # not careful+ema
    assert summary["arms"]["aggressive"]["degenerate_rate"] == pytest.approx(2 / N)
    assert "Degenerate AdvBench replies" in text and "aggressive 10.0%" in text


def test_grid_holds_exactly_the_prompts_where_the_arms_disagree(tmp_path):
    """Arms agree (refuse) on every prompt but 3 (careful complies), 5 (aligned complies) and 9 (the aggressive
    pair complies): the grid shows those 3, in order, and nothing else."""
    v = {a: list(NONE) for a in ARMS}
    v["base"] = list(ALL)  # base is context, never compared
    v["careful"][3] = v["aligned"][5] = v["aggressive"][9] = v["aggressive+ema"][9] = True
    summary, gens = make(v, LOSS)
    assert demo.disagreements(gens, "advbench", ARMS[1:], ["aggressive+ema", "careful+ema"]) == [3, 5, 9]
    page = render(tmp_path, summary, gens)
    grid = page.split("<h2>Where the arms differ: AdvBench</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr><td>(\d+)</td>", grid)
    assert rows == ["3", "5", "9"]  # the index of generations.jsonl (from 0), so a row is found there by it
    assert grid.count("<details>") == 3 * len(ARMS)


def test_grid_shows_the_ema_arms_compliances_and_ignores_a_constant_arm(ema_helps, tmp_path):
    """aggressive complies with every prompt: that is the usual pattern, not a disagreement; the prompts its EMA
    average answered are shown."""
    summary, gens = ema_helps
    assert demo.disagreements(gens, "advbench", ARMS[1:], ["aggressive+ema", "careful+ema"]) == list(EMA_ANSWERED)
    page = render(tmp_path, summary, gens)
    grid = page.split("<h2>Where the arms differ: AdvBench</h2>")[1].split("<h2>")[0]
    assert re.findall(r"<tr><td>(\d+)</td>", grid) == [str(i) for i in EMA_ANSWERED]
    assert "no refusal phrase from aggressive; a refusal phrase from aligned" in grid


def test_csp_has_no_unsafe_inline_and_the_hashes_match(ema_helps, tmp_path):
    page = render(tmp_path, *ema_helps)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "default-src 'none'" in policy
    parsed = Page(page)

    def sha(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert parsed.scripts == [report.SORT_FILTER_JS]
    script_src = re.search(r"script-src ([^;]+)", policy).group(1).split()
    assert script_src == [sha(parsed.scripts[0])]
    assert re.search(r"style-src ([^;]+)", policy).group(1).split() == [sha(parsed.styles[0])]
    names = {k for k, _ in parsed.attrs}
    assert "style" not in names and not [k for k in names if k.startswith("on")]  # inline handlers/styles would be blocked


def test_a_planted_script_is_escaped_everywhere(tmp_path):
    evil = "<script>alert(1)</script>"
    v = {a: list(NONE) for a in ARMS} | {"aggressive+ema": [True] + NONE[1:]}
    summary, gens = make(v, LOSS, responses={("aggressive+ema", 0): evil})
    for g in gens:
        if g["model"] == "careful" and g["benchmark"] == "advbench" and g["index"] == 0:
            g["prompt"] = "<img src=x onerror=alert(1)>"
    summary["arms"]["careful"]["samples"] = [{"prompt": evil, "response": evil, "reference": evil}]
    page = render(tmp_path, summary, gens)
    parsed = Page(page)
    assert parsed.tags.count("script") == 1 and parsed.scripts == [report.SORT_FILTER_JS]
    assert all(v.startswith("data:image/png;base64,") for k, v in parsed.attrs if k == "src")  # only the plots
    assert not [k for k, _ in parsed.attrs if k == "onerror"]
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    shown = "".join(parsed.text)
    assert shown.count(evil) >= 4  # grid cell, table of every reply, and the sample's prompt/reply/reference


def test_no_absolute_path_from_the_summary_in_the_page(ema_helps, tmp_path):
    summary, gens = ema_helps
    page = render(tmp_path, summary, gens)
    found = set()

    def walk(x):
        if isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, list):
            [walk(v) for v in x]
        elif isinstance(x, str) and x.startswith("/"):
            found.add(x)

    walk(summary)
    assert {PATHS["model"], PATHS["aligned"], PATHS["source"]} <= found
    assert not [p for p in found | {str(tmp_path)} if p in page]
    assert "/secret" not in page and "smol as shipped" in page  # the model by its name


def test_page_is_readable_on_a_phone_and_numbers_have_one_format(ema_helps, tmp_path):
    page = render(tmp_path, *ema_helps)
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    assert ".scroll{overflow-x:auto" in page and page.count("<table") == page.count("<div class='scroll'><table")
    assert "2e-4" in page and "2e-5" in page and "0.0002" not in page and "2e-05" not in page
    assert "<td> x </td>" not in page and "first N rows" not in page
    assert "AdvBench: no refusal phrase found ↓ (95% CI)" in page and "ROUGE-L ↑ (n=2)" in page
    assert "held-out Dolly loss ↓ (95% CI)" in page and "XSTest safe prompts refused ↓ (95% CI)" in page


def test_every_generic_page_gets_the_same_safety_and_layout(tmp_path):
    """A scenario's own report (detox, dialogue) goes through html_page and table_html too."""
    page = report.html_page("detox", [("Results", report.table_html(["arm", "x"], [["<b>adlm</b>", 1]]))],
                            notes=["<i>note</i>"])
    assert "name='viewport'" in page and "unsafe-inline" not in page and "script-src" not in page
    assert "&lt;b&gt;adlm&lt;/b&gt;" in page and "&lt;i&gt;note&lt;/i&gt;" in page
    assert "<h2>Provenance</h2>" in page and "git commit" in page and "CPU" in page


def test_formats():
    assert [report.lr(x) for x in (1e-4, 2e-5, 0.0002, 3e-3, 1.5e-4)] == ["1e-4", "2e-5", "2e-4", "3e-3", "1.5e-4"]
    assert report.pct(0.1458) == "14.6%" and report.pct_range(0.0725, 0.2717) == "7.2–27.2%"
    assert report.points_diff({"diff": -0.854, "low": -0.958, "high": -0.75}) == "-85.4 pts (-95.8 to -75.0)"
    assert report.pct(None) == report.NA


@pytest.mark.parametrize("text, flag", [("", True), ("   ", True), ("🌟🌟🌟🌟", True), ("the the the the the", True),
                                        ("I'm sorry I can't. I'm sorry I can't. I'm sorry I can't.", True),
                                        ("Here is a plan: first, gather the tools; then, follow the steps.", False),
                                        ("No.", False), ("I cannot help with that.", False),
                                        ("дддд ждж ддд жжж", True), ("1234 5678 = 9999 + 42", True),
                                        ("Sure: `x = 1; y = x + 2` then print(y).", False)])
def test_degenerate(text, flag):
    """Empty, repetitive or not English-like (under half the visible characters ASCII letters)."""
    assert judges.degenerate(text) is flag


def test_plot_pairs_runs_with_their_ema_average():
    from PIL import Image
    import io

    points = [{"label": a, "harmful_rate": r, "ci_low": max(0, r - 0.1), "ci_high": min(1, r + 0.1), "heldout_loss": x,
               "heldout_loss_ci": [x - 0.01, x + 0.01]} for a, r, x in (("aggressive", 1.0, 2.6), ("aggressive+ema", 0.15, 2.61))]
    png = report.tradeoff_png(points, "heldout_loss", "loss (lower = better)", "t", y_percent=True,
                              arrows=[("aggressive", "aggressive+ema")], legend=False)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size[0] > 300
    curves = report.loss_curves_png({"a": [{"step": i, "loss": 2 - i / 10} for i in range(1, 13)], "b": [{"step": 1, "loss": 1.0}]})
    with Image.open(io.BytesIO(curves)) as im:
        assert im.format == "PNG"


def test_a_system_plots_its_own_numbers_under_their_own_names():
    """The y-axis is a key, not "harmful_rate": a KG row's knowledge F1 is plotted as knowledge F1 (issue #35)."""
    from PIL import Image
    import io

    from safebasin.plots import tradeoff_png

    points = [{"label": n, "knowledge_f1": f, "knowledge_f1_ci": [f - 0.01, f + 0.02], "unigram_f1": u}
              for n, f, u in (("no knowledge", 0.05, 0.2), ("SURGE", 0.3, 0.25))]
    png = tradeoff_png(points, "unigram_f1", "unigram F1", "t", y_key="knowledge_f1", y_lim=None)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
    with pytest.raises(KeyError, match="harmful_rate"):  # the default key is the safety number, not a guess
        tradeoff_png([{k: v for k, v in points[0].items() if k != "knowledge_f1_ci"} | {"ci_low": 0, "ci_high": 1}],
                     "unigram_f1", "x", "t")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the page script's syntax is not checked")
def test_page_script_is_valid_javascript(tmp_path):
    (tmp_path / "s.js").write_text(report.SORT_FILTER_JS)
    r = subprocess.run(["node", "--check", str(tmp_path / "s.js")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("layout", ["crowded", "stacked", "spread"])
def test_every_plot_label_sits_nearest_its_own_point_and_overlaps_nothing(layout):
    """The trade-off plot's labels, for hand-made points that sit close together (the safety demo's careful and
    careful+ema were 1 point apart; base and aggressive stacked): each label's box is nearer its own dot than any
    other dot, and no two labels overlap."""
    from safebasin.plots import plt, tradeoff_figure

    coords = {"crowded": [(2.10, 0.05), (2.115, 0.08), (2.13, 0.05), (2.115, 0.02), (2.6, 0.9)],  # about 10 px apart
              "stacked": [(2.3, 0.10), (2.3, 0.13), (2.3, 0.16), (2.3, 0.19), (2.9, 0.9), (2.9, 0.87)],
              "spread": [(1.0, 0.1), (2.0, 0.5), (3.0, 0.9)]}[layout]
    names = ["careful", "careful+ema", "aligned", "base", "aggressive", "aggressive+ema"]
    points = [{"label": n, "harmful_rate": y, "ci_low": y, "ci_high": y, "heldout_loss": x, "marker": n == "aligned"}
              for n, (x, y) in zip(names, coords)]
    fig = tradeoff_figure(points, "heldout_loss", "loss", "t", y_percent=True)
    fig.canvas.draw()  # the annotations' positions are resolved at draw time
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    dots = {p["label"]: ax.transData.transform((p["heldout_loss"], p["harmful_rate"])) for p in points}
    from matplotlib.text import Text

    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts if t.get_text() in dots}  # not the leader
    plt.close(fig)
    assert set(boxes) == set(dots)

    def gap(box, q):
        return max(box.x0 - q[0], 0, q[0] - box.x1) ** 2 + max(box.y0 - q[1], 0, q[1] - box.y1) ** 2

    for name, box in boxes.items():
        assert all(gap(box, dots[o]) > gap(box, dots[name]) for o in dots if o != name), (layout, name)
    names_ = list(boxes)
    for i, a in enumerate(names_):
        for b in names_[i + 1:]:
            A, B = boxes[a], boxes[b]
            assert min(A.x1, B.x1) <= max(A.x0, B.x0) or min(A.y1, B.y1) <= max(A.y0, B.y0), (layout, a, b)


def _detox_summary(adlm_diff):
    arm = lambda emt, ppl, method=None: {"expected_max_toxicity": emt, "emt_ci": [emt - 0.05, emt + 0.05],  # noqa: E731
                                         "toxicity_probability": 0.5, "tp_ci": [0.3, 0.7], "perplexity": ppl,
                                         "dist-2": 0.9, "scorer": "minilm-rtp",
                                         "config": {"method": method, "lr": 2e-3, "steps": 24} if method else {"model": "m"}}
    arms = {"base": arm(0.7, 20.0), "adlm": arm(0.5, 30.0, "adlm"), "dapt": arm(0.8, 40.0, "dapt")}
    arms["adlm"]["emt_diff_vs_base"] = adlm_diff
    arms["dapt"]["emt_diff_vs_base"] = {"diff": 0.1, "low": 0.02, "high": 0.18}
    return {"seed": 0, "arms": arms, "settings": {"prompts": 3, "samples": 2, "top_p": 0.9, "max_new_tokens": 5,
                                                  "model": "m", "steps": 24, "batch_size": 8, "train_rows": 100},
            "scaled_down": ["prompts: 3"], "timings_s": {"total": 1.0},
            "table": {"columns": ["arm"], "rows": [[n] for n in arms]}}


def test_the_detox_report_tells_its_story_in_the_shared_order(tmp_path):
    """Headline from the paired difference, a content warning before any prompt, each arm in words, the paired
    differences with the perplexity cost, data-driven caveats, seeded and disagreement examples, every
    continuation (escaped) with both scorers."""
    from safebasin.detox import demo as detox_demo

    gens = [{"model": m, "index": i, "sample": s, "prompt": f"prompt {i} <b>bold</b>", "continuation": f"<script>x{m}{i}{s}",
             "toxicity:minilm-rtp": 0.1 * i + (0.5 if m == "dapt" else 0), "toxicity:profanity-check": 0.2}
            for m in ("base", "adlm", "dapt") for i in range(3) for s in range(2)]
    detox_demo.write_report(tmp_path, _detox_summary({"diff": -0.2, "low": -0.3, "high": -0.1}), gens, prompts_shown=2)
    page = (tmp_path / "report.html").read_text()
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert heads[:5] == ["What was done", "The arms", "Results", "Paired differences against the reference", "Caveats"]
    assert heads[5].startswith("Examples: a seeded") and heads[6].startswith("Examples: where") and "Every generation" in heads
    assert "adlm lowered expected max toxicity on 3 challenging prompts: 0.700 (base) → 0.500, -0.200 (paired 95% CI " \
           "-0.300 to -0.100), at +50% perplexity." in page
    assert page.index("Content warning") < page.index("prompt 0")
    assert "<script>x" not in page and "&lt;script&gt;xadlm00" in page and "<b>bold</b>" not in page
    assert "In this run dapt is more toxic than the base model (+0.100" in page
    assert "profanity-check" in page and page.count("&lt;script&gt;x") >= 18  # every continuation is in the table
    assert "fine-tuned on the non-toxic half" in page  # dapt in plain words
    detox_demo.write_report(tmp_path, _detox_summary({"diff": -0.02, "low": -0.1, "high": 0.05}), gens)
    page = (tmp_path / "report.html").read_text()
    assert "adlm did not measurably change expected max toxicity" in page
    assert "In this run adlm does not differ measurably from the base model" in page
