"""The differentiable retrieval model that attacks see: backbone + l2 normalisation + soft assignment."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone

SIMILARITIES = ("dot", "cos", "l2")


class RetrievalModel(nn.Module):
    """``images [0,1] -> z = l2-normalised embedding`` and the soft centroid distribution of eq. (7).

    ``codebooks`` is ``[M, K, D/M]`` (K-means, or a PQN's learned unit codewords with ``subvector_norm``).
    ``similarity``: ``dot`` is eq. (7) as printed, <z_m, c_mk>; ``cos`` l2-normalises sub-vectors and
    codewords first; ``l2`` is -||z_m - c_mk||^2, the soft form of the index's own assignment (eq. 1). The
    logits are divided by ``temperature``.

    The backbone may run under autocast (bf16); everything after it (normalisation, logits, log-softmax)
    runs in float32 outside autocast, on every device: AOD's gradient is the difference of two nearly
    uniform distributions, which bf16 rounding swamps.
    """

    def __init__(self, backbone: Backbone, codebooks: torch.Tensor, similarity: str = "dot",
                 temperature: float = 1.0, subvector_norm: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("codebooks", codebooks.float(), persistent=False)
        self.similarity = similarity
        self.temperature = temperature
        self.subvector_norm = subvector_norm

    @property
    def M(self) -> int:  # noqa: N802
        return self.codebooks.shape[0]

    def normalize(self, f: torch.Tensor) -> torch.Tensor:
        """z = F_CNN(y) / ||F_CNN(y)|| in float32; per sub-vector for a PQN target (``subvector_norm``)."""
        f = f.float()
        if self.subvector_norm:
            return nn.functional.normalize(f.view(f.shape[0], self.M, -1), dim=-1).view(f.shape[0], -1)
        return nn.functional.normalize(f, dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval feature z of images ``x`` (float32)."""
        f = self.backbone.forward_features(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.normalize(f)

    def assignment_logits(self, z: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """``[B, M, K]`` logits sim(z_m, c_mk) / T of eq. (7), float32; T is ``temperature`` when given, else the
        model's."""
        sub = z.float().view(z.shape[0], self.M, -1)
        c = self.codebooks
        if self.similarity == "cos":
            sub, c = nn.functional.normalize(sub, dim=-1), nn.functional.normalize(c, dim=-1)
        sim = torch.einsum("bmd,mkd->bmk", sub, c)
        if self.similarity == "l2":  # -||z_m - c_mk||^2 = 2 <z_m, c_mk> - ||z_m||^2 - ||c_mk||^2
            sim = 2 * sim - sub.pow(2).sum(-1, keepdim=True) - c.pow(2).sum(-1)[None]
        return sim / (self.temperature if temperature is None else temperature)

    def index_codes(self, z: torch.Tensor) -> torch.Tensor:
        """The index's hard assignment, eq. (1): argmin_k ||z_m - c_mk||^2, int64 ``[B, M]`` (float32)."""
        with torch.autocast(z.device.type, enabled=False):
            sub = z.float().view(z.shape[0], self.M, -1)
            c = self.codebooks
            dist = sub.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("bmd,mkd->bmk", sub, c) + c.pow(2).sum(-1)[None]
            return dist.argmin(-1)

    def argmax_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Eq. (6) as printed: argmax_k <z_m, c_mk>, int64 ``[B, M]`` (float32)."""
        with torch.autocast(z.device.type, enabled=False):
            return torch.einsum("bmd,mkd->bmk", z.float().view(z.shape[0], self.M, -1), self.codebooks).argmax(-1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, M, K]`` log soft assignment log p^ of eq. (7) for features z, in float32 outside autocast."""
        with torch.autocast(z.device.type, enabled=False):
            return torch.log_softmax(self.assignment_logits(z), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z [B, D], log p^ [B, M, K])``, both float32: features and the log soft assignment of eq. (7)."""
        f = self.backbone.forward_features(x)
        with torch.autocast(x.device.type, enabled=False):
            z = self.normalize(f)
            return z, torch.log_softmax(self.assignment_logits(z), dim=-1)
