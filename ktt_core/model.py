"""The model every plugin shares: encoder -> pooled text vector -> the plugin's head.

A model plugin writes only a :class:`ClassifierHead`: its layers, its loss and how its
outputs score the hierarchy's paths. Everything else (encoder, pooling, devices,
checkpoints, training, decoding, metrics) is the core's.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from ktt_core.hierarchy import Hierarchy


class ClassifierHead(nn.Module, ABC):
    """The part of a model that is its own. Subclass it in a model plugin.

    ``forward`` maps pooled features (batch, input_dim) to the head's raw outputs, whatever
    their shape; ``loss`` and ``path_log_scores`` (or ``level_log_scores``) interpret them.
    """

    def __init__(self, hierarchy: Hierarchy, config: dict[str, Any], input_dim: int):
        super().__init__()
        self.hierarchy = hierarchy
        self.config = config
        self.input_dim = input_dim
        # Hierarchy lookups as tensors that follow the head across devices (not saved:
        # the checkpoint's hierarchy rebuilds them).
        self.register_buffer("leaf_ancestors", torch.as_tensor(hierarchy.leaf_ancestors), persistent=False)
        for d in range(1, hierarchy.depth):
            self.register_buffer(f"parent_of_{d}", torch.as_tensor(hierarchy.parent_of[d]), persistent=False)

    def parent_index(self, level: int) -> torch.Tensor:
        """For each class of ``level`` (>= 1), its parent's index in ``level - 1``."""
        return getattr(self, f"parent_of_{level}")

    @abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Raw outputs for a batch of pooled encoder features."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar training loss; ``targets`` is (batch, depth) class ids local to each level."""

    def level_log_scores(self, outputs: torch.Tensor) -> list[torch.Tensor] | None:
        """Per level, (batch, n_d) log-scores of that level's classes, for heads that score
        levels separately (``None`` otherwise). Used for per-level argmax decoding and, by
        default, to score paths."""
        return None

    def path_log_scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """(batch, n_leaves) log-score of every path of the hierarchy (one per leaf).

        The core decodes predictions from these: the best path always exists in the
        hierarchy, so decoding is consistent by construction. The default sums the
        per-level log-scores along each path.
        """
        levels = self.level_log_scores(outputs)
        if levels is None:
            raise NotImplementedError(f"{type(self).__name__} must define path_log_scores or level_log_scores")
        return sum(scores.float()[:, self.leaf_ancestors[:, d]] for d, scores in enumerate(levels))


class KttModel(nn.Module):
    """Encoder + pooling + a plugin's head, with what is needed to rebuild it."""

    def __init__(self, name: str, hierarchy: Hierarchy, config: dict[str, Any],
                 encoder: nn.Module, tokenizer, head: ClassifierHead):
        super().__init__()
        self.name = name
        self.hierarchy = hierarchy
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = head
        # Reference-set features: token-pooled vectors averaged down to a small width,
        # sized from the encoder (384 -> 24 with a kernel of 16), as drift detection on
        # hundreds of columns is slow and unreadable.
        width = min(config.get("reference_features", 24), self.hidden_size)
        self.feature_pool = nn.AdaptiveAvgPool1d(width)

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, hidden) text vectors: masked mean of token states, or the first token's."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.get("pooling", "mean") == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(input_ids, attention_mask))

    def forward_with_features(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Head outputs plus the pooled features the drift monitor compares."""
        features = self.encode(input_ids, attention_mask)
        return self.head(features), self.feature_pool(features.unsqueeze(1)).squeeze(1)

    def path_log_scores(self, input_ids, attention_mask) -> torch.Tensor:
        return self.head.path_log_scores(self(input_ids, attention_mask))

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups: encoder and head learn at their own rates."""
        return [
            {"params": list(self.encoder.parameters()), "lr": self.config["encoder_lr"], "name": "encoder"},
            {"params": list(self.head.parameters()), "lr": self.config["classifier_lr"], "name": "head"},
        ]
