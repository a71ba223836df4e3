"""The pyfunc of every registered relgraph model, as an MLflow "model from code".

`register_model` logs this file (not a pickled object) as the model's `python_model`;
MLflow copies it next to the artifacts (weights: `best.pt` read with
`torch.load(weights_only=True)`, or LightGBM's `model.txt`; the spec as YAML; encoders
and config in `relgraph.json`) and, on load, runs it: it names the class, which lives in
the installed package, so loading a registered model unpickles nothing.
"""

from mlflow.models import set_model

from pipeline.serving.registry import RelgraphModel

set_model(RelgraphModel())
