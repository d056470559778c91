"""`safebasin` command line: one subcommand per job. Options live beside the code they drive."""

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import UserError
from .ui import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune chat LLMs on benign data without leaving their safety basin.")
STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors.")):
    STATE["debug"] = debug
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)], force=True)
    for noisy in ("transformers", "accelerate", "datasets", "httpx", "huggingface_hub", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; flags override its keys."),
    model: Optional[str] = typer.Option(None, help="smollm2-135m-instruct, a HF id, a folder or a .gguf file."),
    data: Optional[str] = typer.Option(None, help="dolly, alpaca, orca, safety, or a .json/.jsonl/.csv file."),
    data_dir: Optional[str] = typer.Option(None, help="Where named datasets live (default: $SAFEBASIN_DATA_DIR, ../shared/data)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Per-device micro-batch size."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (overrides --epochs)."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the data when --steps is not given."),
    max_seq_len: Optional[int] = typer.Option(None, help="Longer examples are truncated."),
    max_examples: Optional[int] = typer.Option(None, help="Use at most this many training rows."),
    heldout_size: Optional[int] = typer.Option(None, help="Rows held out (by seed) for held-out loss."),
    ema_beta: Optional[float] = typer.Option(None, help="Parameter-space EMA β in [0, 1]; omit for no EMA."),
    ema_on_cpu: Optional[bool] = typer.Option(None, "--ema-on-cpu/--ema-on-device", help="Hold the EMA copy in CPU RAM."),
    lora_r: Optional[int] = typer.Option(None, help="LoRA rank; 0 = full fine-tuning."),
    filter_safety: Optional[bool] = typer.Option(None, "--filter-safety/--keep-safety", help="Drop safety-related rows."),
    chat_template: Optional[str] = typer.Option(None, help="Jinja chat template file, for models that ship none."),
    mixed_precision: Optional[str] = typer.Option(None, help="no, bf16 or fp16."),
    seed: Optional[int] = typer.Option(None),
    output_dir: Optional[str] = typer.Option(None, help="Where config.yaml, model/, raw/ and train_log.jsonl go."),
    trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code", help="Run code shipped with the model (off by default)."),
    overwrite: bool = typer.Option(False, help="Replace a different run already in --output-dir."),
):
    """Fine-tune a model (full or LoRA), optionally with parameter-space EMA."""
    from .config import load_train_config
    from .train import train as run

    overrides = {k: v for k, v in locals().items() if k not in ("config", "overwrite", "run", "load_train_config")}
    cfg = load_train_config(config, overrides)
    out = run(cfg, overwrite=overwrite)
    console.print(f"[green]done[/green]: kept model in {out / 'model'}")


def main() -> None:
    try:
        app()  # standalone: typer handles usage errors (exit 2) and --help itself
    except UserError as e:
        if STATE["debug"]:
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
