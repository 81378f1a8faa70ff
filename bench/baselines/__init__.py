"""Reference implementations the benchmarks compare our pipeline against (written here, not copied)."""
