"""safebasin: fine-tune chat LLMs on benign data without leaving their safety basin."""

__version__ = "0.1.0"
