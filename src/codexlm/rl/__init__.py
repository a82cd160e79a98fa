"""Learning from whether the code runs: the task set, rewards, GRPO and DPO (docs/rl.md)."""
