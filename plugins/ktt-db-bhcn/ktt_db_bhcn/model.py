"""The heads of DB-BHCN and DB-BHCN-AWX, and their losses as standalone functions.

BHCN (Branching Hierarchical Classification Network): one linear layer per level.
Level 1: ``z_1 = W_1 x + b_1``; level d > 1: ``z_d = W_d [x ; A_{d-1}] + b_d`` with
``A_{d-1} = dropout(LayerNorm(phi(z_{d-1})))`` and ``phi`` ReLU or tanh. Each level's
``log_softmax(z_d)`` is a local output that "branches" off the main flow.

AWX (Adjacency Wrapping matriX): the last level's logits go through a sigmoid (one score
per leaf) and every class of every level scores the n-norm of the scores of the leaves
under it, so a parent never scores below its children. The leaves-under-a-class sums and
maxima are scatters over ``leaf_ancestors`` (``ktt_core.ops.leaves_to_levels``): memory is
linear in the number of classes, there is no dense (leaves x classes) R matrix.

Both heads return the concatenated per-level logits ``(batch, n_classes)`` from
``forward`` (one tensor for the core and for export); ``loss`` and ``level_log_scores``
interpret them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ktt_core.errors import KttError
from ktt_core.model import ClassifierHead
from ktt_core.ops import leaves_to_levels, multi_hot

NONLINEAR = {"relu": nn.ReLU, "tanh": nn.Tanh}

#: AWX scores are clamped to (AWX_EPS, 1 - AWX_EPS) so their logs and the BCE stay finite.
AWX_EPS = 1e-6


# -- losses and scores as plain functions (tested on hand-computed values) --------------


def level_weights(depth: int, gamma: float) -> torch.Tensor:
    """``w_d = 1 - linspace(-gamma, gamma, depth)``: the per-level weights of the local loss.

    gamma < 0 weighs the lower (finer) levels more, gamma > 0 the upper ones, 0 all alike.
    With one level ``linspace`` gives ``[-gamma]``, so ``w = [1 + gamma]`` (a plain scale).
    """
    return 1.0 - torch.linspace(-gamma, gamma, depth, dtype=torch.float32)


def weighted_local_loss(log_probs: Sequence[torch.Tensor], targets: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
    """``sum_d w_d * NLL(log_probs[d], targets[:, d])``, each NLL averaged over the batch.

    ``log_probs[d]`` is (batch, n_d) log-probabilities of level d, ``targets`` (batch, depth)
    class ids local to each level, ``weights`` (depth,) from :func:`level_weights`.
    """
    return sum(weights[d] * F.nll_loss(lp, targets[:, d]) for d, lp in enumerate(log_probs))


def hierarchical_loss(log_probs: Sequence[torch.Tensor],
                      parent_of: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """BHCN's hierarchical term (without ``lambda_H``): each level learns the parent of the
    child predicted one level below, weighted by how sure that child prediction is.

    For every level d < D (0-based d = 0 .. D-2) and every row i::

        c_i   = argmax_c log_probs[d+1][i, c]            predicted child
        t_i   = parent_of[d+1][c_i]                       its parent: the target of level d
        f_i   = exp(log_probs[d+1][i, c_i])  (detached)   the child's predicted probability
        term_d = mean_i( -log_probs[d][i, t_i] * f_i )

    and the result is ``sum_d term_d`` (0 for a single level).

    ``f`` is our reading of the original's "1 - normalised negative child score of the
    target": the target ``t_i`` comes from the child ``c_i``, whose negative log-score
    ``-log p`` normalised to [0, 1) as ``1 - p`` gives ``f = 1 - (1 - p) = p``. An unlikely
    child prediction (small p) therefore barely moves the level above. ``f`` is detached:
    the term teaches the upper level, and must not teach the lower one to be less sure.

    ``parent_of[d]`` maps level d's classes to their parent in level d-1 (index 0 unused).
    """
    total = log_probs[0].new_zeros(())
    for d in range(len(log_probs) - 1):
        child_lp = log_probs[d + 1]
        best, child = child_lp.detach().max(dim=1)
        target = parent_of[d + 1][child]
        nll = -log_probs[d].gather(1, target[:, None]).squeeze(1)
        total = total + (nll * best.exp()).mean()
    return total


def awx_scores(leaf_scores: torch.Tensor, leaf_ancestors: torch.Tensor, level_sizes: Sequence[int],
               norm: int, eps: float = AWX_EPS) -> list[torch.Tensor]:
    """Per level, (batch, n_d) AWX scores from (batch, n_leaves) leaf scores in (0, 1).

    ``score_j = || s_l for the leaves l under j ||_n`` clamped to (eps, 1 - eps); ``norm <= 0``
    takes the max instead (n = infinity), ``norm = 1`` is a clamped sum. A leaf scores
    itself. As a parent's leaves include each child's, parent >= child in every mode.

    The n-norm is computed as ``m_j * (sum_l (s_l / m_j)^n)^(1/n)`` with ``m_j`` the max
    under j: the inner sum is >= 1, so ``s^n`` cannot underflow to 0 for small scores and
    large n (which would make the gradient of ``x^(1/n)`` at 0 NaN).
    """
    peaks = leaves_to_levels(leaf_scores, leaf_ancestors, level_sizes, reduce="amax")
    if norm <= 0:
        return [p.clamp(eps, 1 - eps) for p in peaks]
    out = []
    for d, (peak, size) in enumerate(zip(peaks, level_sizes)):
        if d == len(level_sizes) - 1:
            out.append(leaf_scores.clamp(eps, 1 - eps))  # a leaf is the only leaf under itself
            continue
        index = leaf_ancestors[:, d]
        ratio = leaf_scores / peak[:, index].clamp(min=torch.finfo(peak.dtype).tiny)
        total = leaves_to_levels(ratio ** norm, index[:, None], [size], reduce="sum")[0]
        # total >= 1 (the peak leaf adds 1) unless every leaf under j underflowed to 0.
        total = total.clamp(min=1.0)
        out.append((peak * total ** (1.0 / norm)).clamp(eps, 1 - eps))
    return out


def binary_cross_entropy(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE of probabilities already clamped away from 0 and 1 (written out, since
    ``F.binary_cross_entropy`` refuses to run under CUDA autocast)."""
    probs, targets = probs.float(), targets.float()
    return -(targets * probs.log() + (1 - targets) * (1 - probs).log()).mean()


# -- heads ----------------------------------------------------------------------------


class BHCNHead(ClassifierHead):
    """DB-BHCN: per-level layers, per-level softmax, local + hierarchical loss."""

    def __init__(self, hierarchy, config, input_dim):
        super().__init__(hierarchy, config, input_dim)
        nonlinear = config.get("nonlinear", "relu")
        if nonlinear not in NONLINEAR:
            raise KttError(f"key 'nonlinear' must be relu or tanh, got {nonlinear!r}")
        sizes = hierarchy.level_sizes
        self.layers = nn.ModuleList(
            [nn.Linear(input_dim, sizes[0])]
            + [nn.Linear(input_dim + sizes[d - 1], sizes[d]) for d in range(1, len(sizes))])
        # A_{d-1} feeds level d: one LayerNorm per level that has a level below it.
        self.norms = nn.ModuleList([nn.LayerNorm(sizes[d]) for d in range(len(sizes) - 1)])
        self.phi = NONLINEAR[nonlinear]()
        self.dropout = nn.Dropout(config["dropout"])
        self.register_buffer("level_weights", level_weights(hierarchy.depth, config["gamma_L"]),
                             persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.layers[0](features)
        logits = [z]
        for d in range(1, len(self.layers)):
            a = self.dropout(self.norms[d - 1](self.phi(z)))
            z = self.layers[d](torch.cat([features, a.to(features.dtype)], dim=1))
            logits.append(z)
        return torch.cat(logits, dim=1)

    def split_levels(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        """The concatenated outputs cut back into per-level (batch, n_d) float32 blocks."""
        return list(outputs.float().split(self.hierarchy.level_sizes, dim=1))

    def local_log_probs(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        return [F.log_softmax(z, dim=1) for z in self.split_levels(outputs)]

    def parents(self) -> list[torch.Tensor | None]:
        return [None] + [self.parent_index(d) for d in range(1, self.hierarchy.depth)]

    def local_loss(self, log_probs, targets) -> torch.Tensor:
        return self.config["lambda_L"] * weighted_local_loss(log_probs, targets, self.level_weights)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = self.local_log_probs(outputs)
        return (self.local_loss(log_probs, targets)
                + self.config["lambda_H"] * hierarchical_loss(log_probs, self.parents()))

    def level_log_scores(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        # The core sums these along each path (consistent decoding) or takes each
        # level's argmax (per-level decoding, the original's, not always consistent).
        return self.local_log_probs(outputs)


class BHCNAWXHead(BHCNHead):
    """DB-BHCN-AWX: BHCN's layers; AWX scores over all classes from the last level's sigmoid.

    Loss: ``lambda_L`` times BHCN's level-weighted local NLL plus the BCE of the AWX scores
    against the multi-hot target (every class on the true path). No hierarchical term.
    ``level_log_scores`` are the logs of the AWX scores; paths are scored by the core's
    default, the sum of those logs along the path. In max mode the best path is then the
    path of the best leaf (each of its ancestors scores exactly that leaf's score, and no
    class scores more), so consistent and per-level decoding agree; for n >= 1 a path also
    gains from the score mass of its ancestors' subtrees.
    """

    def awx(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        leaf_scores = torch.sigmoid(self.split_levels(outputs)[-1])
        return awx_scores(leaf_scores, self.leaf_ancestors, self.hierarchy.level_sizes, self.config["awx_norm"])

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scores = torch.cat(self.awx(outputs), dim=1)
        return (self.local_loss(self.local_log_probs(outputs), targets)
                + binary_cross_entropy(scores, multi_hot(targets, self.hierarchy.level_offsets)))

    def level_log_scores(self, outputs: torch.Tensor) -> list[torch.Tensor]:
        return [s.log() for s in self.awx(outputs)]
