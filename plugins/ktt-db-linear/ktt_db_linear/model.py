"""DB-Linear's head: dropout and one linear layer over the leaves, trained with cross-entropy."""
import torch
from torch import nn
from torch.nn import functional as F

from ktt_core.model import ClassifierHead


class LinearLeafHead(ClassifierHead):
    def __init__(self, hierarchy, config, input_dim):
        super().__init__(hierarchy, config, input_dim)
        self.dropout = nn.Dropout(config["dropout"])
        self.linear = nn.Linear(input_dim, hierarchy.n_leaves)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # A leaf identifies its whole path, so the leaf target carries all levels.
        return F.cross_entropy(outputs, targets[:, -1], label_smoothing=self.config["label_smoothing"])

    def path_log_scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(outputs.float(), dim=-1)
