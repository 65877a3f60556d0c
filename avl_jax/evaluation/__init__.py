"""Evaluation pieces: ground truth (`gt`), scoring (`scoring`) and result files (`writers`)."""
