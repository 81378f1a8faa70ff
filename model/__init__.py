"""The sync expert: a SyncNet / Wav2Lip-style model that scores whether a face window and a mel window are in sync.

Modules:

- :mod:`model.config`: :class:`ModelConfig` (window, crop and mel sizes, width) and the named ``PRESETS``.
- :mod:`model.encoders`: :class:`ConvBlock`, :class:`FaceEncoder` and :class:`AudioEncoder`.
- :mod:`model.expert`: :class:`SyncExpert`, the two encoders joined by cosine similarity, and its input preparation.
- :mod:`model.loss`: :func:`sync_loss` (clamped binary cross-entropy in fp32), :func:`accuracy`, and
  :class:`SyncLoss`, the frozen expert as a loss for lip-sync generators.
- :mod:`model.shard_reader`, :mod:`model.pairs`: segments out of WebDataset shards, and training pairs cut from them.
- :mod:`model.checkpoint`, :mod:`model.offset`, :mod:`model.evaluate`: loading a trained expert, SyncNet's
  offset and confidence, and offset accuracy on videos with known offsets.
- :mod:`model.scoring`, :mod:`model.curate`, :mod:`model.sync`: scoring a video through the preprocessing stages,
  the sync filter over a corpus on Ray Data, and the `score | fix | curate` command.
"""
