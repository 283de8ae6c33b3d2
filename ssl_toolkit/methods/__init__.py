"""The four methods as LightningModules: one file each (loss → heads → module)."""
from ssl_toolkit.methods.base import SSLMethod, mlp
from ssl_toolkit.methods.mae import MAE
from ssl_toolkit.methods.simclr import SimCLR
from ssl_toolkit.methods.simsiam import SimSiam
from ssl_toolkit.methods.vicreg import VICReg

METHODS = {"vicreg": VICReg, "simsiam": SimSiam, "simclr": SimCLR, "mae": MAE}

__all__ = ["MAE", "METHODS", "SSLMethod", "SimCLR", "SimSiam", "VICReg", "mlp"]
