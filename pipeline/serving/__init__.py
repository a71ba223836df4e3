"""Serving: MLflow tracking, the model registry and champion gate, and batch predictions."""
