"""Serving: the model registry and champion gate, the registered model's code, batch
predictions and explanations."""
