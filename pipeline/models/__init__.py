"""Graph model architectures (encoders, message passing, transformers, task heads) and
the LightGBM models. Every model maps a sampled ``HeteroData`` batch to seed embeddings
``[B, hidden]``; a :class:`~pipeline.models.heads.TaskHead` turns those into predictions.
Which models exist, and how each is built from a
:class:`~pipeline.models.config.ModelConfig`, is the model table's business
(`pipeline/training/zoo.py`).
"""
