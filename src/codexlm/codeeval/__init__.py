"""Functional correctness: `scoring` (pass@k of completions), `sandbox` (where they run),
`problems` (the task sets), `decontam` (13-gram overlap with them)."""
