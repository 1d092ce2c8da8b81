"""The differentiable retrieval model that attacks see: backbone + l2 normalisation + soft assignment."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone


class RetrievalModel(nn.Module):
    """``images [0,1] -> z = l2-normalised embedding`` and the soft centroid distribution of eq. (7).

    ``codebooks`` is ``[M, K, D/M]`` (K-means, or a PQN's learned ones with ``subvector_norm``). ``similarity`` is ``dot`` (eq. 7 as written: <z_m, c_mk>) or ``cos``
    (sub-vector and codewords l2-normalised); the logits are divided by ``temperature``.
    """

    def __init__(self, backbone: Backbone, codebooks: torch.Tensor, similarity: str = "dot",
                 temperature: float = 1.0, subvector_norm: bool = False) -> None:
        super().__init__()
        if similarity not in ("dot", "cos"):
            raise ValueError(f"attack.similarity={similarity!r}: expected dot or cos")
        if temperature <= 0:
            raise ValueError(f"attack.temperature={temperature}: must be > 0")
        self.backbone = backbone
        self.register_buffer("codebooks", codebooks.float(), persistent=False)
        self.similarity = similarity
        self.temperature = temperature
        self.subvector_norm = subvector_norm

    @property
    def M(self) -> int:  # noqa: N802
        return self.codebooks.shape[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """z = F_CNN(y) / ||F_CNN(y)|| (float32); per sub-vector for a PQN target (``subvector_norm``)."""
        f = self.backbone.forward_features(x).float()
        if self.subvector_norm:
            return nn.functional.normalize(f.view(f.shape[0], self.M, -1), dim=-1).view(f.shape[0], -1)
        return nn.functional.normalize(f, dim=1)

    def assignment_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, M, K]`` logits <z_m, c_mk> / T of eq. (7)."""
        sub = z.view(z.shape[0], self.M, -1)
        c = self.codebooks
        if self.similarity == "cos":
            sub, c = nn.functional.normalize(sub, dim=-1), nn.functional.normalize(c, dim=-1)
        return torch.einsum("bmd,mkd->bmk", sub, c) / self.temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z [B, D], log p^ [B, M, K])``: features and the log soft assignment of eq. (7)."""
        z = self.features(x)
        return z, torch.log_softmax(self.assignment_logits(z), dim=-1)
