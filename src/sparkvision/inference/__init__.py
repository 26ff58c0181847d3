"""Inference: batch prediction as a DataFrame transform (streaming builds on it)."""
