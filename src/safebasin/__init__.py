"""safebasin: fine-tune chat LLMs on benign data without leaving their safety basin."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml (dynamic) and `safebasin --version` read it
