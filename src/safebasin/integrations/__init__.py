"""safebasin's EMA and safety monitor as callbacks for trainers people already use (Hugging Face Trainer, TRL)."""

from .transformers import EMACallback, SafetyMonitorCallback

__all__ = ["EMACallback", "SafetyMonitorCallback"]
