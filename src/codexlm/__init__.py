"""codexlm: reproducible training and fine-tuning of causal language models with DVC."""

__version__ = "0.1.0"
