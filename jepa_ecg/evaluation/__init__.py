"""Scoring: metrics with bootstrap CIs, the evaluator given a predict_fn, plots."""
