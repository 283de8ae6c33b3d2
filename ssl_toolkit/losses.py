"""The pure loss functions, re-exported from the method files where they live.

Each takes plain tensors and returns a scalar; each works on CPU in one process, and gathers over
ranks (with gradients) when ``torch.distributed`` is initialised.
"""
from ssl_toolkit.methods.mae import mae_loss
from ssl_toolkit.methods.simclr import nt_xent_loss
from ssl_toolkit.methods.simsiam import simsiam_loss
from ssl_toolkit.methods.vicreg import vicreg_loss

__all__ = ["mae_loss", "nt_xent_loss", "simsiam_loss", "vicreg_loss"]
