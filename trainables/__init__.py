"""The code of one Ray Tune trial: training, grid evaluation and MLflow logging."""
