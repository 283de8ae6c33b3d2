"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022).

The image is cut into patches, 75% of them are dropped at random, a ViT encoder sees only the
visible ones, and a light decoder (8 blocks, 512 wide) reconstructs the pixels of the masked ones
from the encoded tokens plus mask tokens. The loss is the MSE on masked patches only, against
per-patch normalised pixels. Written in the paper's pipeline order: ``patchify``,
``random_masking``, ``forward_encoder``, ``forward_decoder``, then the loss. Patches and masks work
for any channel count and any image whose sides divide by the patch size (4×84×84 Atari stacks,
1×210×160 frames).
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ssl_toolkit.distributed import at_least_float32
from ssl_toolkit.methods.base import SSLMethod


def mae_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """Mean squared error over masked patches only.

    Args:
        pred, target: ``(B, L, P)`` predicted and true patch pixels.
        mask: ``(B, L)``, 1 = masked (the loss counts these), 0 = visible.
        norm_pix: normalise each target patch by its own mean and std first.
    Returns: scalar.
    """
    pred, target = at_least_float32(pred, target)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum()


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, L, p*p*C)`` with ``L = (H/p)(W/p)``, row-major over the patch grid."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} does not divide into {p}x{p} patches")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, L, p*p*C) -> (B, C, H, W)``."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, c, h, w)


def random_masking(x: torch.Tensor, mask_ratio: float):
    """Keep a random ``1 - mask_ratio`` of the tokens of each sample (per-sample shuffle).

    Args: x: ``(B, L, D)`` patch tokens.
    Returns: ``x_visible (B, L_keep, D)``, ``mask (B, L)`` with 1 = masked, ``ids_restore (B, L)``.
    """
    b, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(b, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, length, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_visible, mask, ids_restore


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, ``(grid_h * grid_w, dim)``; half the channels
    encode the row, half the column (MAE's choice), so non-square grids work."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.flatten()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class MAE(SSLMethod):
    """MAE with a timm VisionTransformer encoder from the registry.

    Args:
        mask_ratio: fraction of patches dropped (0.75).
        decoder_dim, decoder_depth, decoder_heads: the light decoder (512, 8, 16 in the paper).
        norm_pix_loss: normalised-pixel targets (the paper's best setting).
        **kwargs: see :class:`~ssl_toolkit.methods.base.SSLMethod` (AdamW, betas (0.9, 0.95),
            base lr 1.5e-4, wd 0.05, 40 warm-up epochs of 800 → 5%). ``backbone`` must be a ViT;
            pass ``img_size``/``patch_size`` in ``backbone_kwargs`` for other input sizes.
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("backbone", "vit_base_patch16_224")
        kwargs.setdefault("optimizer", "adamw")
        kwargs.setdefault("base_lr", 1.5e-4)
        kwargs.setdefault("weight_decay", 0.05)
        kwargs.setdefault("betas", (0.9, 0.95))
        kwargs.setdefault("warmup_fraction", 0.05)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        vit = self.backbone
        if not all(hasattr(vit, a) for a in ("patch_embed", "pos_embed", "cls_token", "blocks")):
            raise ValueError(f"MAE needs a ViT backbone (timm VisionTransformer), got {self.hparams.backbone!r}")
        self.patch_size = vit.patch_embed.patch_size[0]
        grid_h, grid_w = vit.patch_embed.grid_size
        self.grid = (grid_h, grid_w)
        enc_dim = vit.embed_dim
        # MAE fixes the encoder's position embedding to sin-cos (cls position = 0)
        with torch.no_grad():
            vit.pos_embed.zero_()
            vit.pos_embed[0, vit.num_prefix_tokens:] = sincos_pos_embed(enc_dim, grid_h, grid_w)
        vit.pos_embed.requires_grad_(False)

        patch_dim = self.patch_size**2 * self.hparams.in_chans
        self.decoder_embed = nn.Linear(enc_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed",
            torch.cat([torch.zeros(1, decoder_dim), sincos_pos_embed(decoder_dim, grid_h, grid_w)])[None],
            persistent=False,
        )
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float):
        """``(B, C, H, W)`` → latent ``(B, 1 + L_keep, D)``, mask ``(B, L)``, ids_restore ``(B, L)``."""
        vit = self.backbone
        n_prefix = vit.num_prefix_tokens
        x = vit.patch_embed(imgs)
        x = x + vit.pos_embed[:, n_prefix:]
        x, mask, ids_restore = random_masking(x, mask_ratio)
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = vit.blocks(vit.norm_pre(x))
        return vit.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, 1 + L_keep, D)`` → predicted patches ``(B, L, p*p*C)``."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        n_mask = length + 1 - x.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n_mask, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        imgs = batch["views"][0]
        latent, mask, ids_restore = self.forward_encoder(imgs, self.hparams.mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        loss = mae_loss(pred, patchify(imgs, self.patch_size), mask, self.hparams.norm_pix_loss)
        self.log_terms(loss)
        cls = latent[:, 0]
        self.monitor_collapse(cls)
        # the probe reads the class token of the masked pass: free, and still a useful trend
        return loss + self.online_probe_loss(cls, batch.get("label"))
