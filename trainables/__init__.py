"""What runs inside one Ray Tune trial: training, grid evaluation and MLflow logging."""
