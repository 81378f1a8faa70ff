"""Data pipelines: the synthetic corpus generator and the Ray Data preprocessing job."""
