"""The models users bring: tiny random models of nine decoder-only families, each with a chat template shaped like
its family's own (strict role alternation for Mistral and Gemma, <bos> at the start where the family's tokenizer
puts one; none for GPT-2, GPT-NeoX and OPT, which ship without one), run through the real CLI. Every cell trains
and scores, or is the one-line refusal the README's "which models work" table documents."""

import json
import os

import pytest
import torch
from tokenizers import processors

from safebasin import data, models
from test_bad_input import expect_one_line, invoke

END = "{{ eos_token }}"  # each family's own end-of-turn token, played by the tiny vocabulary's EOS
ALTERNATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
             "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% endfor %}")
TEMPLATES = {
    "llama": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] }}" + END + "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
              "<|end_header_id|>\n\n{% endif %}"),
    "qwen2": None,  # ChatML: the tiny tokenizer's own template
    "phi3": ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}" + END + "\n{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
    "mistral": ("{{ bos_token }}" + ALTERNATE + "{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
                "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}" + END + "{% endif %}{% endfor %}"),
    "gemma2": ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
               "{% endif %}" + ALTERNATE + "{% for m in messages %}<start_of_turn>"
               "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}" + END + "\n{% endfor %}"
               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "gpt2": None, "gpt_neox": None, "opt": None,
}
TEMPLATES["gemma3"] = TEMPLATES["gemma2"]
TEXT_ONLY = {"gpt2", "gpt_neox", "opt"}  # no chat template shipped
WITH_BOS = {"llama", "mistral", "gemma2", "gemma3", "opt"}  # their tokenizers put a token before plain text


def family_model(kind: str):
    """A tiny random model of the family, in its own transformers class (two layers, hidden 64)."""
    import transformers as tf

    small = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=1024, tie_word_embeddings=False)
    config = {
        "llama": lambda: tf.LlamaConfig(**small, num_key_value_heads=2),
        "qwen2": lambda: tf.Qwen2Config(**small, num_key_value_heads=2),
        "phi3": lambda: tf.Phi3Config(**small, num_key_value_heads=2, pad_token_id=0),
        "mistral": lambda: tf.MistralConfig(**small, num_key_value_heads=2, sliding_window=None),
        "gemma2": lambda: tf.Gemma2Config(**small, num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0),
        "gemma3": lambda: tf.Gemma3TextConfig(**small, num_key_value_heads=2, head_dim=16, sliding_window=64),
        "gpt2": lambda: tf.GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=1024),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**small, rotary_pct=0.5),
        "opt": lambda: tf.OPTConfig(vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=1024, word_embed_proj_dim=64),
    }[kind]()
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config)


def family_tokenizer(kind: str):
    tok = models.tiny_tokenizer()
    if kind in WITH_BOS:  # as Llama's and Gemma's tokenizers do (OPT's puts </s>; played by the same token)
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    if kind in TEXT_ONLY:
        tok.chat_template = None
    elif TEMPLATES[kind]:
        tok.chat_template = TEMPLATES[kind]
    return tok


FAMILIES = list(TEMPLATES)


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "model"
    models.save(family_model(request.param), family_tokenizer(request.param), path)
    return request.param, path


def test_plain_text_starts_with_the_token_the_tokenizer_puts_first(family_dir):
    """ADLM's Jigsaw rows and the rtp prompts (plain text) begin as the model's own tokenizer begins text."""
    kind, path = family_dir
    tok = models.load_tokenizer(str(path))
    ids, _, _ = data.encode_text("a b", tok, 64)
    assert ids[0] == tok.bos_token_id if kind in WITH_BOS else ids[: 2] == tok("a b", add_special_tokens=False)["input_ids"][:2]
    assert models.text_prefix_ids(tok) == ([tok.bos_token_id] if kind in WITH_BOS else [])


def test_the_adlm_block_starts_equal_to_the_lm_and_both_attributes_agree_at_the_start(family_dir):
    from safebasin.detox.adlm import attach, trunk

    kind, path = family_dir
    model, tok = models.load(str(path))
    ids = torch.tensor([[5, 9, 30, 7, 11], [8, 8, 40, 2, 3]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        block, _ = attach(model)
        after = model(input_ids=ids).logits
        block.steer = True
        both = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-6)
    assert both.shape[0] == 4 and torch.allclose(both[:2], before, atol=1e-5) and torch.allclose(both[2:], before, atol=1e-5)
    assert trunk(model)[0][-1] is block


def _run(args, capsys):
    return invoke(args, capsys)


# The CLI cell costs about 55 s per chat family alone, but 200-500 s beside the other xdist worker on 2 cores (CI of
# 2026-12-08: gemma2 471 s, gemma3 473 s, mistral 216 s; an earlier run: qwen2 506 s, phi3 368 s, llama 190 s), which
# took CI to 35 of its 40 minutes. CI runs Mistral (the strict template) and the three text-only families; the other
# five run with SAFEBASIN_ALL_FAMILIES=1 (all passed so on 2026-12-08). Their BOS, ADLM and SURGE cells run everywhere.
SLOW = {"qwen2", "phi3", "llama", "gemma2", "gemma3"}


def test_every_command_trains_and_scores_or_is_one_line(family_dir, data_dir, tmp_path, capsys):
    """sft (+EMA), lora, eval, adlm (+ its eval on an rtp bench), context-instruct and surge through the CLI."""
    kind, path = family_dir
    if kind in SLOW and not os.environ.get("SAFEBASIN_ALL_FAMILIES"):
        pytest.skip(f"{kind}: the slow CLI cell runs with SAFEBASIN_ALL_FAMILIES=1")
    common = ["--data-dir", data_dir, "--steps", "1", "--batch-size", "2", "--max-examples", "8", "--heldout-size", "2",
              "--max-seq-len", "768"]
    chat_cells = {
        "sft-ema": ["train", "--model", path, "--data", "dolly", "--ema-beta", "0.5", *common],
        "lora": ["train", "--model", path, "--data", "dolly", "--lora-r", "2", *common],
        "context-instruct": ["train", "--model", path, "--method", "context-instruct", *common],
        "surge": ["train", "--model", path, "--method", "surge", *common],
    }
    for cell, args in chat_cells.items():
        out = tmp_path / cell
        code, err = _run([*args, "--output-dir", out], capsys)
        if kind in TEXT_ONLY:  # the documented refusal: a chat needs a template the model does not ship
            expect_one_line(code, err, 2, "has no chat template")
            continue
        expect_one_line(code, err, 0, "")
        assert (out / "model").is_dir() or (out / "adapter").is_dir() or any(out.rglob("*.safetensors")), cell
    if kind not in TEXT_ONLY:
        code, err = _run(["eval", "--model", tmp_path / "sft-ema", "--bench", "advbench", "--data-dir", data_dir,
                          "--limit", "2", "--max-new-tokens", "4", "--output-dir", tmp_path / "ev"], capsys)
        expect_one_line(code, err, 0, "")
        assert json.loads(next((tmp_path / "ev").rglob("eval.json")).read_text())
    # plain continuation needs no template, on every family
    code, err = _run(["train", "--model", path, "--method", "adlm", *common[:-2], "--max-seq-len", "48",
                      "--output-dir", tmp_path / "adlm"], capsys)
    expect_one_line(code, err, 0, "")
    code, err = _run(["eval", "--model", tmp_path / "adlm", "--bench", "rtp-toxic", "--data-dir", data_dir,
                      "--limit", "2", "--samples", "2", "--max-new-tokens", "3", "--output-dir", tmp_path / "adlm-ev"], capsys)
    expect_one_line(code, err, 0, "")


def test_a_text_only_model_trains_chat_data_with_a_template_given(tmp_path, data_dir, capsys):
    path = tmp_path / "gpt2"
    models.save(family_model("gpt2"), family_tokenizer("gpt2"), path)
    (tmp_path / "chatml.jinja").write_text(models.CHATML)
    code, err = _run(["train", "--model", path, "--data", "dolly", "--chat-template", tmp_path / "chatml.jinja",
                      "--data-dir", data_dir, "--steps", "1", "--batch-size", "2", "--max-examples", "4",
                      "--heldout-size", "2", "--max-seq-len", "768", "--output-dir", tmp_path / "run"], capsys)
    expect_one_line(code, err, 0, "")
    code, err = _run(["eval", "--model", tmp_path / "gpt2", "--chat-template", tmp_path / "chatml.jinja", "--bench",
                      "advbench", "--data-dir", data_dir, "--limit", "2", "--max-new-tokens", "3",
                      "--output-dir", tmp_path / "ev"], capsys)
    expect_one_line(code, err, 0, "")


def test_a_chat_a_strict_template_refuses_is_one_line_naming_the_row(tmp_path, data_dir, capsys):
    """A user's own data whose second row opens with the assistant: Mistral's template raises, and the user
    learns which file and row, not a Jinja traceback."""
    path = tmp_path / "mistral"
    models.save(family_model("mistral"), family_tokenizer("mistral"), path)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "odd"},
                          {"role": "assistant", "content": "yes"}]}]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = _run(["train", "--model", path, "--data", tmp_path / "mine.jsonl", "--steps", "1", "--batch-size", "1",
                      "--heldout-size", "0", "--max-seq-len", "256",
                      "--output-dir", tmp_path / "run"], capsys)
    expect_one_line(code, err, 2, "Conversation roles must alternate")
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert "mine.jsonl" in line and "line 2" in line and "assistant/user" in line, line


@pytest.mark.parametrize("kind", FAMILIES)
def test_surges_sequence_nll_is_the_models_own_loss_on_every_family(kind):
    """SURGE scores responses from `inputs_embeds`; its NLL must be the model's own (Gemma's final-logit softcapping,
    GPT-2's and OPT's heads included), checked against `model(inputs_embeds).logits`."""
    from safebasin.kg.methods import SurgeModel

    lm = family_model(kind).eval()
    torch.nn.init.normal_(lm.get_output_embeddings().weight, std=1.0)  # logits large enough for softcapping to bite
    model = SurgeModel(lm, None, None, None)
    embeds = torch.randn(2, 7, lm.config.hidden_size, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    labels = torch.full((2, 7), -100)
    labels[0, 3:] = torch.tensor([5, 9, 30, 7])
    labels[1, 2:5] = torch.tensor([8, 40, 2])
    with torch.no_grad():
        nll, _ = model.sequence_nll(embeds, mask, labels)
        logits = lm(inputs_embeds=embeds, attention_mask=mask).logits.float()
    target = labels[:, 1:]
    want = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target.clamp(min=0), reduction="none")
    torch.testing.assert_close(nll, (want * (target != -100)).sum(1), rtol=1e-5, atol=1e-4)


def test_an_adlm_pointer_keeps_its_chat_templates_text_not_the_relative_path(tmp_path, data_dir, capsys, monkeypatch):
    """A run dir must mean the same model from any directory: the template is stored as text."""
    path = tmp_path / "gpt2"
    models.save(family_model("gpt2"), family_tokenizer("gpt2"), path)
    (tmp_path / "t.jinja").write_text(models.CHATML)
    monkeypatch.chdir(tmp_path)
    code, err = _run(["train", "--model", path, "--method", "adlm", "--chat-template", "t.jinja", "--data-dir", data_dir,
                      "--steps", "1", "--batch-size", "2", "--max-examples", "8", "--heldout-size", "2",
                      "--max-seq-len", "48", "--output-dir", tmp_path / "adlm"], capsys)
    expect_one_line(code, err, 0, "")
    pointer = json.loads(next((tmp_path / "adlm").rglob("adlm.json")).read_text())
    assert pointer["chat_template"] == models.CHATML
