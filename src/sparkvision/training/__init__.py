"""Distributed training: estimator, barrier launcher, executor worker, train loop."""
