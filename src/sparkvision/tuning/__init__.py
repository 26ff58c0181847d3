"""Hyper-parameter tuning of ImageClassifier Params with Optuna; trials are Spark jobs."""
