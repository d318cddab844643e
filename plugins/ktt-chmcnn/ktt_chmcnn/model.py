"""DB-AC-HMCNN's head: a feed-forward network, the max constraint module and MCLoss.

Adapted from C-HMCNN (Giunchiglia & Lukasiewicz, "Coherent Hierarchical Multi-Label
Classification Networks", NeurIPS 2020). A feed-forward network gives one sigmoid score
``h_k`` per class ``k`` of every level. The max constraint module (MCM) scores each class
``j`` with the maximum of ``h`` over ``j`` and all its descendants::

    MCM_j = max_{k in D(j)} h_k            D(j): j and its descendants

so a class never scores below any descendant and every threshold picks a set of classes
closed under "parent of". MCLoss is the BCE of::

    y_j * MCM_j(h * y) + (1 - y_j) * MCM_j(h)

against the multi-hot target ``y`` (every class on the true path): a positive class is
credited by its best *positive* descendant, so the gradient goes to the descendant that
earned the label; a negative class is charged for its best descendant of any kind.

Everything is computed on the logits: the sigmoid is increasing, so
``max_k sigmoid(z_k) = sigmoid(max_k z_k)``, and for ``y_j = 1`` the zeros that ``h * y``
puts on negative descendants never win (``h_j * y_j = h_j > 0``), so ``MCM_j(h * y)`` is the
maximum over the *positive* descendants only. The BCE is then written with ``logsigmoid``,
which stays finite and exact where ``log(sigmoid(z))`` would round to ``log(0)``.

The maxima over descendants are bottom-up scatters over the parent indices
(``ktt_core.ops.max_over_descendants``), not the dense (classes x classes) matrix M of the
original: memory is linear in the number of classes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ktt_core.errors import KttError
from ktt_core.model import ClassifierHead
from ktt_core.ops import max_over_descendants, multi_hot

NONLINEAR = {"relu": nn.ReLU, "tanh": nn.Tanh}

#: Floor of the per-level log-scores (as ``torch.nn.BCELoss`` clamps its logs at -100).
MIN_LOG_SCORE = -100.0


# -- MCM and MCLoss as plain functions (tested on hand-computed values) -------------------


def split_levels(values: torch.Tensor, level_sizes: Sequence[int]) -> list[torch.Tensor]:
    """(batch, n_classes) over all levels -> per level (batch, n_d)."""
    return list(values.split(list(level_sizes), dim=1))


def max_constraint(logits: torch.Tensor, level_sizes: Sequence[int],
                   parents: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """(batch, n_classes) MCM of the logits: each class's max over itself and its descendants.

    ``parents[d]`` maps level d's classes to their parent in level d-1 (``None`` for d = 0).
    ``sigmoid`` of the result is C-HMCNN's ``MCM(h)`` with ``h = sigmoid(logits)``.
    """
    return torch.cat(max_over_descendants(split_levels(logits, level_sizes), list(parents)), dim=1)


def mc_loss(logits: torch.Tensor, targets: torch.Tensor, level_sizes: Sequence[int],
            parents: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """C-HMCNN's MCLoss, averaged over the batch and all classes.

    ``logits`` (batch, n_classes) are the unconstrained outputs (``h = sigmoid(logits)``),
    ``targets`` (batch, n_classes) the 0/1 multi-hot target over all levels. With
    ``pos = MCM(h * y)`` and ``neg = MCM(h)``::

        loss = mean_{i,j} -[ y_ij log(pos_ij) + (1 - y_ij) log(1 - neg_ij) ]
    """
    logits = logits.float()
    positive = targets > 0.5
    # Negative classes cannot win the max of h * y (their h * y is 0 < h_j for a positive j).
    floor = torch.finfo(logits.dtype).min
    pos = max_constraint(torch.where(positive, logits, torch.full_like(logits, floor)), level_sizes, parents)
    neg = max_constraint(logits, level_sizes, parents)
    # where(), not y * ..., so the floor of an unused positive term never reaches the sum.
    return torch.where(positive, -F.logsigmoid(pos), -F.logsigmoid(-neg)).mean()


# -- the head -----------------------------------------------------------------------------


def _check_config(config) -> None:
    nonlinear = config.get("h_nonlinear", "relu")
    if nonlinear not in NONLINEAR:
        raise KttError(f"key 'h_nonlinear' must be relu or tanh, got {nonlinear!r}")
    dropout = config.get("h_dropout", 0.7)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise KttError(f"key 'h_dropout' must be in [0, 1), got {dropout!r}")
    for key in ("h_hidden_dim", "h_layer_count"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KttError(f"key '{key}' must be a positive integer, got {value!r}")


class ACHMCNNHead(ClassifierHead):
    """DB-AC-HMCNN: feed-forward network, one logit per class of every level, MCM, MCLoss.

    ``forward`` returns the unconstrained logits (batch, n_classes), levels concatenated;
    ``loss`` is MCLoss on them; ``level_log_scores`` are the logs of the MCM scores per
    level, which the core sums along each path (consistent decoding) or argmaxes level by
    level (per-level decoding, the original's prediction).
    """

    def __init__(self, hierarchy, config, input_dim):
        super().__init__(hierarchy, config, input_dim)
        _check_config(config)
        hidden, count = config["h_hidden_dim"], config["h_layer_count"]
        widths = [input_dim] + [hidden] * (count - 1) + [hierarchy.n_classes]
        layers: list[nn.Module] = []
        for i in range(count):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < count - 1:
                layers += [NONLINEAR[config["h_nonlinear"]](), nn.Dropout(config["h_dropout"])]
        self.network = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network(features)

    def parents(self) -> list[torch.Tensor | None]:
        return [None] + [self.parent_index(d) for d in range(1, self.hierarchy.depth)]

    def mcm_logits(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        """Per level, (batch, n_d) logits of the MCM scores (their sigmoid is the score)."""
        return max_over_descendants(split_levels(outputs.float(), self.hierarchy.level_sizes), self.parents())

    def mcm_scores(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        """Per level, (batch, n_d) MCM scores in (0, 1): a class never scores below a descendant."""
        return [torch.sigmoid(z) for z in self.mcm_logits(outputs)]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = multi_hot(targets, self.hierarchy.level_offsets)
        return mc_loss(outputs, y, self.hierarchy.level_sizes, self.parents())

    def level_log_scores(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        return [F.logsigmoid(z).clamp(min=MIN_LOG_SCORE) for z in self.mcm_logits(outputs)]
