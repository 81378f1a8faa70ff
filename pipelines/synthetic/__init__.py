"""A synthetic talking-face corpus with known audio-video offsets (our stand-in for LRS2)."""
