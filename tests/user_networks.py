"""A user's own network module, imported by name (`user_networks:small_cnn`) in test configs."""
import torch.nn as nn


class SmallCNN(nn.Module):
    """torchvision's layout: features, then a Linear classifier at `fc`."""

    def __init__(self, width: int = 8, num_classes: int = 10, batchnorm: bool = True):
        super().__init__()
        norm = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), norm, nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def small_cnn(width: int = 8, num_classes: int = 10, batchnorm: bool = True) -> nn.Module:
    return SmallCNN(width, num_classes, batchnorm)
