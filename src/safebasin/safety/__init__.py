"""System 1, safe fine-tuning by optimisation (arXiv 2508.12531): its broad safety panel (`panel`)."""
