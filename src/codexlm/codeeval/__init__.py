"""Functional correctness: `scoring` (the judge and pass@k), `cases` (tests as data, judged
outside the sandbox), `sandbox` (where programs run), `problems` (the task sets), `plus`
(stronger generated tests), `decontam` (13-gram overlap with the task sets)."""
