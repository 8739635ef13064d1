"""Procedurally generated 12-lead ECG dataset (offline default for demos and tests)."""
