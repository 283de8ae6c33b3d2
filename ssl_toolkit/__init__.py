"""ssl_toolkit: self-supervised vision pretraining with one augmentation pipeline and one backbone
registry, probes for what the encoders learned, and an adapter that puts them into Atari agents.

The public names below are imported on first use, so ``import ssl_toolkit`` stays cheap (no timm,
Lightning or torch import until something needs them).
"""

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "create_backbone": "ssl_toolkit.backbones",
    "list_backbones": "ssl_toolkit.backbones",
    "load_encoder": "ssl_toolkit.export",
    "save_encoder": "ssl_toolkit.export",
    "SSLMethod": "ssl_toolkit.methods",
    "VICReg": "ssl_toolkit.methods",
    "SimSiam": "ssl_toolkit.methods",
    "SimCLR": "ssl_toolkit.methods",
    "MAE": "ssl_toolkit.methods",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'ssl_toolkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
