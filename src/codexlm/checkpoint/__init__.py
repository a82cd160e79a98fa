"""Checkpoints: `files` writes, verifies and reads one; `policy` decides what to resume,
when to write and what to keep."""
