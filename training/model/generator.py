"""The text-conditional latent generator (Moûsai stage 2).

A 1D U-Net over the DMAE latent [B, 32, T], cross-attending to frozen text token states [B, 64, D].
Classifier-free guidance: a learned null embedding [64, D] replaces the text of each batch element with
probability `cfg_dropout` during training; at sampling, the conditional and unconditional passes run as ONE
batched call and are mixed as u + (c - u) * scale.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .configs import GeneratorConfig
from .diffusion import v_loss
from .unet1d import UNet1d


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.unet = UNet1d(cfg.unet)
        self.null_embedding = nn.Parameter(torch.randn(cfg.text_max_length, cfg.unet.context_features) * 0.02)

    @property
    def length_multiple(self) -> int:
        return self.unet.length_multiple

    def forward(self, x: Tensor, sigma: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """Conditional v for x [B, 32, T], sigma [B], text [B, N, D], text_mask [B, N] (1 = token)."""
        return self.unet(x, sigma, context=text, context_mask=text_mask)

    def null_text(self, batch: int) -> tuple[Tensor, Tensor]:
        emb = self.null_embedding.unsqueeze(0).expand(batch, -1, -1)
        mask = torch.ones(batch, self.cfg.text_max_length, dtype=emb.dtype, device=emb.device)
        return emb, mask

    def guided(self, x: Tensor, sigma: Tensor, text: Tensor, text_mask: Tensor, scale: Tensor | float) -> Tensor:
        """Guided v in one batched call: conditional and unconditional stacked along the batch."""
        b = x.shape[0]
        null, null_mask = self.null_text(b)
        v = self.forward(
            torch.cat([x, x]), torch.cat([sigma, sigma]),
            torch.cat([text, null.to(text.dtype)]), torch.cat([text_mask.to(x.dtype), null_mask.to(x.dtype)]),
        )
        cond, uncond = v[:b], v[b:]
        scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
        return uncond + (cond - uncond) * scale

    def loss(self, latent: Tensor, text: Tensor, text_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """v-objective loss with the null embedding swapped in per element with probability cfg_dropout."""
        b = latent.shape[0]
        drop = torch.rand(b, device=latent.device, generator=generator) < self.cfg.cfg_dropout
        null, null_mask = self.null_text(b)
        text = torch.where(drop[:, None, None], null.to(text.dtype), text)
        text_mask = torch.where(drop[:, None], null_mask.to(text_mask.dtype), text_mask)
        return v_loss(lambda x, s: self.forward(x, s, text, text_mask), latent)
