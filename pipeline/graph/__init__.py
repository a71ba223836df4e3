"""The graph: column encoders, the warehouse as a heterogeneous graph, and the temporal sampler."""
