"""Training: from-scratch baselines (the fine-tuning engine comes with issue 4)."""
