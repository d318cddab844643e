"""The core's transformer model: encoder -> pooled text vector -> a plugin's head.

A plugin with a transformer model writes only a :class:`ClassifierHead`: its layers, its
loss and how its outputs score the hierarchy's paths, and registers it with
``ModelSpec(head=...)``. :class:`EncoderModel` implements the model contract
(:class:`ktt_core.contract.Model`) around it: tokenization, devices, the training loop,
checkpoints, ONNX export. Other frameworks implement the contract themselves.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import nn

from ktt_core.contract import LabelledTexts, Model, Scores
from ktt_core.errors import KttError
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


class ModelConfig(dict):
    """A model's hyperparameters; reading a key it does not have names the fix."""

    def __init__(self, values, model: str):
        super().__init__(values)
        self.model = model

    def __missing__(self, key):
        raise MissingConfigKey(f"model {self.model}: its code reads config key {key!r}, which is not among its "
                               f"keys; add it to the defaults of its ModelSpec (keys: {', '.join(sorted(self))})")


class MissingConfigKey(KttError, KeyError):
    """A one-line error for the CLI, and still a KeyError for code that expects one."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def make_head(spec, hierarchy: Hierarchy, config: dict[str, Any], input_dim: int) -> ClassifierHead:
    """The spec's head, checked once on a probe batch (see :func:`check_head`)."""
    config = config if isinstance(config, ModelConfig) else ModelConfig(config, spec.name)
    head = spec.head_class(hierarchy, config, input_dim)
    if not isinstance(head, ClassifierHead):
        raise KttError(f"model {spec.name}: its head {type(head).__name__} is not a ktt_core.model.ClassifierHead")
    check_head(head, hierarchy)
    return head


def check_head(head: ClassifierHead, hierarchy: Hierarchy, batch: int = 2) -> None:
    """Run ``head`` on a probe batch of zero features: its scores must have the shapes the
    core decodes and its loss must be a scalar, or the head is refused by name
    before anything trains (a wrong shape would otherwise train and report metrics)."""
    name = type(head).__name__
    expect = (batch, hierarchy.n_leaves)
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            outputs = head(torch.zeros((batch, head.input_dim)))
            levels = head.level_log_scores(outputs)
            paths = head.path_log_scores(outputs)
            loss = head.loss(outputs, torch.zeros((batch, hierarchy.depth), dtype=torch.long))
    except (RuntimeError, IndexError, ValueError, TypeError) as exc:
        raise KttError(f"head {name} fails on a probe batch of shape {(batch, head.input_dim)}: "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        head.train(was_training)
    if tuple(paths.shape) != expect:
        raise KttError(f"head {name}: path_log_scores returned shape {tuple(paths.shape)}; expected "
                       f"(batch, n_leaves) = {expect} for this hierarchy ({hierarchy.summary()})")
    if levels is not None:
        shapes = [tuple(x.shape) for x in levels]
        want = [(batch, n) for n in hierarchy.level_sizes]
        if shapes != want:
            raise KttError(f"head {name}: level_log_scores returned shapes {shapes}; expected one "
                           f"(batch, classes of level) per level = {want}")
    if loss.dim() != 0:
        raise KttError(f"head {name}: loss returned shape {tuple(loss.shape)}; expected a scalar")


class EncoderModel(nn.Module, Model):
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
        self._tokenizer_files: dict[str, bytes] | None = None
        # Reference-set features: token-pooled vectors averaged down to a small width,
        # sized from the encoder (384 -> 24 with a kernel of 16), as drift detection on
        # hundreds of columns is slow and unreadable.
        width = min(config.get("reference_features", 24), self.hidden_size)
        self.feature_pool = nn.AdaptiveAvgPool1d(width)

    # -- the model contract ------------------------------------------------------------
    @classmethod
    def base_defaults(cls) -> dict[str, Any]:
        from ktt_core.config import ENCODER_DEFAULTS

        return dict(ENCODER_DEFAULTS)

    @classmethod
    def build(cls, spec, hierarchy: Hierarchy, config: dict[str, Any]) -> "EncoderModel":
        from ktt_core.encoders import check_max_length, load_pretrained

        encoder, tokenizer = load_pretrained(config["encoder"], config["allow_download"])
        check_max_length(encoder, config)
        head = make_head(spec, hierarchy, config, encoder.config.hidden_size)
        return cls(spec.name, hierarchy, config, encoder, tokenizer, head)

    @classmethod
    def from_state(cls, spec, checkpoint: dict[str, Any]) -> "EncoderModel":
        from ktt_core.checkpoint import as_bytes, hierarchy_and_config
        from ktt_core.encoders import encoder_from_config, tokenizer_from_files

        path, state = checkpoint["path"], checkpoint["state"]
        hierarchy, config = hierarchy_and_config(spec, checkpoint)
        try:
            encoder = encoder_from_config(state["encoder_config_json"])
            tokenizer_files = {k: as_bytes(v) for k, v in state["tokenizer_files"].items()}
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise KttError(f"{path}: the encoder config or tokenizer it holds is invalid ({exc!r:.120})") from None
        tokenizer = tokenizer_from_files(tokenizer_files)
        head = make_head(spec, hierarchy, config, encoder.config.hidden_size)
        model = cls(spec.name, hierarchy, config, encoder, tokenizer, head)
        model.load_weights(checkpoint)
        model._tokenizer_files = tokenizer_files
        return model

    def dry_run(self, sample: LabelledTexts) -> str:
        """A forward pass and the loss on a few real training rows."""
        from ktt_core.data.batches import eval_loader

        batch = next(iter(eval_loader(self.tokenize(sample), len(sample))))
        self.eval()
        with torch.no_grad():
            outputs = self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            loss = self.head.loss(outputs, batch["targets"].to(self.device))
        if not torch.isfinite(loss):
            raise KttError(f"model {self.name}: the loss of a forward pass on {len(sample)} training texts is {float(loss)}")
        return f"a forward pass on {len(sample)} training texts, loss {float(loss):.4f}"

    def fit(self, train: LabelledTexts, val: LabelledTexts, run) -> list[dict]:
        from ktt_core.training import fit

        return fit(self, self.tokenize(train, run.cache_dir), self.tokenize(val, run.cache_dir), run)

    def score(self, texts: Sequence[str], features: bool = False) -> Scores:
        from ktt_core.inference import score_split

        return score_split(self, self.tokenize(LabelledTexts.unlabelled(texts, self.hierarchy)),
                           features=features)

    def state(self) -> dict[str, Any]:
        from ktt_core.encoders import tokenizer_to_files

        if self._tokenizer_files is None:  # saved every epoch: serialise the tokenizer once
            self._tokenizer_files = tokenizer_to_files(self.tokenizer)
        return {"encoder_config_json": self.encoder.config.to_json_string(),
                "tokenizer_files": dict(self._tokenizer_files),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    def export(self, fmt: str, directory):
        if fmt == "onnx":
            from ktt_core.export.onnx import export_onnx

            return export_onnx(self, directory)
        return None

    def summary(self) -> str:
        n_params = sum(p.numel() for p in self.parameters())
        return f"{n_params / 1e6:.1f}M parameters, encoder {self.config['encoder']}"

    # -- torch details -----------------------------------------------------------------
    def tokenize(self, data: LabelledTexts, cache_dir=None):
        """``data`` as an :class:`~ktt_core.data.batches.EncodedSplit` (token ids cached on
        disk under ``cache_dir``, keyed by tokenizer, max_length and texts)."""
        from ktt_core.data.batches import encode_texts

        return encode_texts(data.texts, self.tokenizer, self.config["max_length"], self.hierarchy,
                            targets=data.targets, cache_dir=cache_dir)

    def load_weights(self, checkpoint: dict) -> None:
        try:
            self.load_state_dict(checkpoint["state"]["state_dict"], strict=True)
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise KttError(f"{checkpoint['path']}: weights do not fit model {self.name} ({first})") from None

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

    def head_scores(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The one place head outputs become scores (inference, frozen-encoder validation,
        the ONNX graph): float32 path log-scores and, for heads that score levels, the
        levels' log-scores concatenated coarse to fine (else ``None``)."""
        levels = self.head.level_log_scores(outputs)
        concatenated = None if levels is None else torch.cat([x.float() for x in levels], dim=1)
        return self.head.path_log_scores(outputs).float(), concatenated

    def path_log_scores(self, input_ids, attention_mask) -> torch.Tensor:
        return self.head_scores(self(input_ids, attention_mask))[0]

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups: encoder and head learn at their own rates."""
        return [
            {"params": list(self.encoder.parameters()), "lr": self.config["encoder_lr"], "name": "encoder"},
            {"params": list(self.head.parameters()), "lr": self.config["classifier_lr"], "name": "head"},
        ]
