"""Pure computation for diffusion-based anomaly detection: data, models, methods and metrics.

Nothing here imports Ray or MLflow, so every part can be tested and reused alone.
"""
