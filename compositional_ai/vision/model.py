"""A compact CNN that grades solar-cell damage from one grayscale electroluminescence image.

Sized for a 2-core CPU: a stride-2 stem, three stages of two 3x3 convolutions with BatchNorm, then
average and max pooling over the whole map (a crack is small; max pooling keeps it from being
averaged away). With the default width 16 it has about 0.3 M parameters. `stem_convs=2` puts a
second, narrow stride-2 convolution in front, so an image of twice the side costs little more
than the one-convolution stem at the smaller side: the first layer sees cracks a pixel or two
thin at full resolution, and the rest of the network works on the same map size as before.
"""

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DamageCNN(nn.Module):
    """Image [N, 1, H, W] (uint8 0..255 or float 0..1) -> class logits [N, num_classes].

    The model scales and standardises each image itself (zero mean, unit variance per image),
    so serving code feeds decoded pixels directly and camera exposure does not shift the input.
    `image_size` is the side length the model was trained at; it is stored with the weights so
    the serving code decodes photos at the same size.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 16,
        dropout: float = 0.2,
        image_size: int = 96,
        stem_convs: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if stem_convs not in (1, 2):
            raise ValueError(f"stem_convs must be 1 or 2, got {stem_convs}")
        if image_size < 8 * 2**stem_convs:
            raise ValueError(
                f"image_size must be >= {8 * 2**stem_convs} ({3 + stem_convs} halvings), "
                f"got {image_size}"
            )
        self.init_kwargs = {
            "num_classes": num_classes,
            "width": width,
            "dropout": dropout,
            "image_size": image_size,
            "stem_convs": stem_convs,
        }
        self.num_classes = num_classes
        self.image_size = image_size
        w = width
        stem = _conv_bn_relu(1, w, stride=2)
        if stem_convs == 2:
            narrow = max(1, w // 2)
            stem = [*_conv_bn_relu(1, narrow, stride=2), *_conv_bn_relu(narrow, w, stride=2)]
        self.features = nn.Sequential(
            *stem,
            *_conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w),
            *_conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w),
            *_conv_bn_relu(4 * w, 4 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(4 * w, 8 * w),
            *_conv_bn_relu(8 * w, 8 * w),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * 8 * w, num_classes)

    @staticmethod
    def standardise(images: torch.Tensor) -> torch.Tensor:
        """Scale uint8 to [0, 1], then give each image zero mean and unit variance."""
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected images [N, 1, H, W], got shape {tuple(images.shape)}")
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        # The floor keeps a flat (blank) image at zero instead of amplifying its noise.
        std = x.std(dim=(1, 2, 3), keepdim=True, correction=0).clamp_min(1e-3)
        return (x - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(self.standardise(images))
        pooled = torch.cat((features.mean(dim=(2, 3)), features.amax(dim=(2, 3))), dim=1)
        return self.head(self.dropout(pooled))


class DamageEnsemble(nn.Module):
    """Members that differ only by their training seed, averaged; optionally over flips too.

    The output is the log of the members' mean class probability, so a softmax of it (what
    every caller applies to a model's output) gives that mean. With `flips`, each member also
    sees the image flipped left-right, up-down and both, and the 4 x members probabilities are
    averaged: the decision is then the same whoever calls the model (batch inference, the
    service, evaluation), with no flag to forget.

    `class_weights` [members, classes], the loss weights each member was trained with, undoes
    the prior shift a weighted loss causes: a member trained with weights w fits the posterior of
    a population whose class priors are scaled by w, so its probabilities are divided by w and
    renormalised, which returns them to the training population's priors (the ones whose argmax
    maximises accuracy) while the weighting still made the rare classes count in training. A
    weight of 0 (a class absent from a member's training data) gives that class probability 0.
    """

    def __init__(
        self,
        members: list[DamageCNN],
        *,
        flips: bool = False,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        sizes = {(m.num_classes, m.image_size) for m in members}
        if len(sizes) != 1:
            raise ValueError(f"members disagree on (num_classes, image_size): {sorted(sizes)}")
        ((self.num_classes, self.image_size),) = sizes
        self.members = nn.ModuleList(members)
        self.flips = flips
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (len(members), self.num_classes):
                raise ValueError(
                    f"class_weights must be [members, classes] = [{len(members)}, "
                    f"{self.num_classes}], got {tuple(class_weights.shape)}"
                )
            if bool((class_weights < 0).any()) or not bool((class_weights > 0).any(dim=1).all()):
                raise ValueError("class_weights must be >= 0 with a positive weight per member")
        self.register_buffer("class_weights", class_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        views = [images]
        if self.flips:
            left_right = images.flip(-1)
            views = [images, left_right, images.flip(-2), left_right.flip(-2)]
        # One forward pass per member over every view at once: [views * N, 1, H, W].
        stacked = torch.cat(views)
        probabilities = torch.stack([torch.softmax(m(stacked), dim=1) for m in self.members])
        if self.class_weights is not None:
            # Weight 0 marks a class the member never saw in training: its prior there is 0.
            weights = self.class_weights
            inverse = torch.where(weights > 0, 1.0 / weights.clamp_min(1e-12), 0.0)
            probabilities = probabilities * inverse[:, None, :]
            probabilities = probabilities / probabilities.sum(dim=2, keepdim=True)
        mean = probabilities.mean(dim=0).reshape(len(views), images.shape[0], -1).mean(dim=0)
        return torch.log(mean.clamp_min(1e-12))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
