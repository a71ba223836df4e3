"""Training: the model table, the graph-model trainer (one or many processes), the
hyper-parameter search, metrics and plots, and one model run end to end."""
