"""ssl_toolkit: self-supervised vision pretraining with one augmentation pipeline and one backbone
registry, probes for what the encoders learned, and an adapter that puts them into Atari agents."""

__version__ = "0.1.0"
