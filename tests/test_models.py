"""Loading the models users bring: what is refused, and how (issue #39)."""



def test_an_encoder_decoder_model_is_refused_in_one_line_naming_what_was_found(tmp_path, capsys):
    """Issue #39: T5 used to get "add a chat template", then a loader class error; now one line, before either."""
    from transformers import T5Config, T5ForConditionalGeneration

    from test_bad_input import invoke

    T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)).save_pretrained(tmp_path / "t5")
    code, err = invoke(["eval", tmp_path / "t5", "--bench", "advbench", "--limit", "1"], capsys)
    line = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "T5Config (model_type 't5') is an encoder-decoder model; safebasin trains and scores decoder-only causal LMs" in line
    assert "chat template" not in line
