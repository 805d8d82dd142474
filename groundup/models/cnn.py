"""A small convolutional classifier: [Conv2d -> ReLU -> MaxPool2d] x L -> Linear.

Each block looks at 3x3 neighbourhoods with one set of weights shared across the image
(weight sharing), then halves the resolution; a linear head reads the last feature map.

    from groundup.models.cnn import CNN, CNNConfig
    model = CNN(CNNConfig(image_size=8, channels=(16, 32)))
    logits = model(x)                   # (N, 8, 8) or (N, 1, 8, 8) -> (N, 10)

Uses ``groundup.nn.Conv2d`` / ``MaxPool2d`` (torch's parameter names and init); parameters are
``features.0.weight`` (C_out, C_in, k, k), ``features.0.bias``, ..., ``head.weight``, ``head.bias``.

Reference: LeCun et al., "Gradient-based learning applied to document recognition" (1998).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from groundup import functional as F
from groundup import nn
from groundup.tensor import Tensor

__all__ = ["CNNConfig", "CNN"]


@dataclass(frozen=True)
class CNNConfig:
    """Sizes of the CNN.

    Attributes:
        in_channels: image channels (1 for grey digits).
        image_size: height = width of the input (8 for sklearn digits, 28 for MNIST).
        channels: output channels of each conv block; each block halves the resolution.
        kernel_size: odd square kernel; padding keeps the size before pooling.
        num_classes: number of output logits.
    """

    in_channels: int = 1
    image_size: int = 8
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 3
    num_classes: int = 10

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"CNNConfig: channels must be a non-empty tuple of positive ints, got {self.channels}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"CNNConfig: kernel_size must be odd (same-size padding), got {self.kernel_size}")
        if self.image_size // 2 ** len(self.channels) < 1:
            raise ValueError(f"CNNConfig: {len(self.channels)} pooling blocks shrink a {self.image_size}px image "
                             "to nothing; use fewer channels entries or larger images")

    @property
    def feature_size(self) -> int:
        """Side of the last feature map."""
        return self.image_size // 2 ** len(self.channels)


class CNN(nn.Module):
    """Conv blocks (``features``: Sequential of Conv2d, ReLU, MaxPool2d, ...) and a linear ``head``."""

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_channels
        for channels in config.channels:
            layers += [nn.Conv2d(width, channels, config.kernel_size, padding=config.kernel_size // 2), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * config.feature_size ** 2, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, H, W) or (N, C, H, W) images -> logits (N, num_classes)."""
        c, s = self.config.in_channels, self.config.image_size
        if x.ndim == 3 and c == 1:
            x = x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])  # (N, 1, H, W)
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"CNN: expected images (N, {c}, {s}, {s}) or (N, {s}, {s}), got shape {x.shape}")
        h = self.features(x)                                     # (N, C_last, s', s')
        return self.head(h.reshape(h.shape[0], -1))              # (N, C_last * s' * s') -> (N, num_classes)

    def first_layer_filters(self) -> Any:
        """The first convolution's weights as a NumPy array (C_out, C_in, k, k), for plotting."""
        return self.features[0].weight.detach().numpy()

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean softmax cross-entropy of the logits against integer labels y (N,)."""
        return F.cross_entropy(self(x), y)
