"""Data in: the dataset spec, the sources it reads, the DuckDB warehouse, and task label tables."""
