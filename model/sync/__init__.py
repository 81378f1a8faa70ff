"""Using a trained expert on videos and corpora: `score`, `fix`, `curate` (`python -m model.sync`).

`scoring` runs the preprocessing stages on one video and measures its offset; `curate` is the Ray Data sync filter
over a corpus; `cli` is the command line.
"""
