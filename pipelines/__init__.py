"""Data pipelines: videos to WebDataset shards on Ray Data, and what every job shares.

- :mod:`pipelines.core`: the expert's clock, storage (local and s3://), configs as command lines, Ray sessions;
- :mod:`pipelines.shards`: the shard format, its writer and its one reader;
- the preprocessing job (:mod:`pipelines.preprocess`) and its stages: sources, decode (with media, audio),
  :mod:`pipelines.faces`, samples;
- :mod:`pipelines.synthetic`: the synthetic talking-face corpus with known offsets (tests and the demo; not installed).
"""
