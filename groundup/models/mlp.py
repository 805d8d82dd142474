"""A multilayer perceptron (feedforward net) classifier: Linear -> activation -> ... -> Linear.

With no hidden layers it is softmax (multinomial logistic) regression, the linear baseline the
roadmap compares it with. Images are flattened first, so (N, 8, 8) digits and (N, 64) rows both work.

    from groundup.models.mlp import MLP, MLPConfig
    model = MLP(MLPConfig(in_features=64, hidden_sizes=(128,), num_classes=10))
    logits = model(x)                   # (N, 64) or (N, 8, 8) -> (N, 10)
    loss = model.loss(x, y)             # mean softmax cross-entropy

Reference: Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors" (1986).
"""

from __future__ import annotations

from dataclasses import dataclass

from groundup import functional as F
from groundup import nn
from groundup.tensor import Tensor

__all__ = ["MLPConfig", "MLP"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


@dataclass(frozen=True)
class MLPConfig:
    """Sizes of an MLP classifier.

    Attributes:
        in_features: input size after flattening (64 for 8x8 digits, 784 for MNIST).
        hidden_sizes: width of each hidden layer; () gives softmax regression (a linear model).
        num_classes: number of output logits.
        activation: nonlinearity after each hidden layer: "relu", "tanh", "gelu" or "sigmoid".
        dropout: dropout probability after each activation (0 disables it).
    """

    in_features: int = 64
    hidden_sizes: tuple[int, ...] = (128,)
    num_classes: int = 10
    activation: str = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.in_features <= 0 or self.num_classes <= 0 or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"MLPConfig: sizes must be positive, got in_features={self.in_features}, "
                             f"hidden_sizes={self.hidden_sizes}, num_classes={self.num_classes}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"MLPConfig: activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MLPConfig: dropout must be in [0, 1), got {self.dropout}")


class MLP(nn.Module):
    """Feedforward classifier. ``net`` is a Sequential, so parameters are ``net.0.weight``, ``net.0.bias``, ..."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_features
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[config.activation]()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, in_features) or (N, ...) with in_features values per sample -> logits (N, num_classes)."""
        if x.ndim != 2:
            x = x.reshape(x.shape[0], -1)  # (N, in_features)
        if x.shape[1] != self.config.in_features:
            raise ValueError(f"MLP: expected {self.config.in_features} input features, got input of shape {x.shape}")
        return self.net(x)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean softmax cross-entropy of the logits against integer labels y (N,)."""
        return F.cross_entropy(self(x), y)
