"""Training: the model table and its families, preparing a task, the graph-model trainer
(one or many processes), the hyper-parameter search, MLflow tracking, and one model run
end to end."""
