"""Experiment tracking (optional): MLflow runs for training, evaluation and tuning.

Nothing here imports ``mlflow`` until a run is asked for (``pip install
'sparkvision[mlflow]'``); the rest of sparkvision never imports this unit's MLflow code.
"""
