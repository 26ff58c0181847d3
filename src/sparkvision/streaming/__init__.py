"""Structured Streaming prediction: files arriving in a folder → predictions, exactly once.

``start(model, input, output, checkpoint, …)`` returns the ``StreamingQuery``."""

from sparkvision.streaming.query import start

__all__ = ["start"]
