"""The sync expert and what uses it.

- the network: :mod:`model.config` (sizes, presets), :mod:`model.encoders`, :mod:`model.expert` (cosine similarity
  read as P(in sync)), :mod:`model.loss` (BCE, :class:`~model.loss.SyncLoss` for generators), :mod:`model.checkpoint`
  (the one checkpoint format), :mod:`model.import_expert` (Wav2Lip's released expert into that format);
- :mod:`model.offset`: SyncNet's offset and confidence from a similarity grid;
- :mod:`model.loader`: training pairs drawn from shard segments and streamed into batches;
- :mod:`model.sync`: `score | fix | curate` with a trained expert; :mod:`model.evaluate`: offset accuracy.
"""
