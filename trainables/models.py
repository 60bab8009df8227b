"""Networks by name. Every network is a backbone that returns a feature vector plus named heads.

Methods add heads instead of rewriting models: SLA a joint C*M head next to the single head,
SSD a soft head next to the hard one and a rotation head, MoCo a projection. `Network.forward`
returns the logits of the "main" head; `Network.features` the pooled feature vector.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# torchvision, timm, safetensors and huggingface_hub are imported where a network from them is
# asked for: timm is optional, and torchvision's import costs ~1.6 s here that the built-in networks never need.


class Network(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.heads = nn.ModuleDict({"main": nn.Linear(feature_dim, num_classes)})
        self.model_args: dict[str, Any] = {}  # how a foreign network was built (saved with checkpoints)
        self.source_classes: Optional[int] = num_classes  # a foreign network's own classifier size

    def add_head(self, name: str, out_features: int) -> nn.Linear:
        head = nn.Linear(self.feature_dim, out_features)
        device = next(self.backbone.parameters()).device
        self.heads[name] = head.to(device)
        return self.heads[name]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, head: str = "main") -> torch.Tensor:
        return self.heads[head](self.features(x))


# ---- CIFAR ResNets with option-A (zero-padded identity) shortcuts, He et al. 2016 §4.2 ----

class _ZeroPadShortcut(nn.Module):
    """Option A: subsample spatially, pad the new channels with zeros (no parameters)."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class _BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = (nn.Identity() if stride == 1 and in_ch == out_ch
                         else _ZeroPadShortcut(out_ch - in_ch, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: tuple[int, ...], in_channels: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, in_ch = [], widths[0]
        for stage, width in enumerate(widths[1:]):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(_BasicBlock(in_ch, width, stride))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


# ---- Wide ResNets (Zagoruyko & Komodakis), pre-activation blocks ----

class _WideBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = (None if in_ch == out_ch and stride == 1
                         else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, in_channels: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, in_ch = [], widths[0]
        for stage, width in enumerate(widths[1:]):
            for b in range(blocks):
                layers.append(_WideBlock(in_ch, width, 2 if stage > 0 and b == 0 else 1))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_ch)
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


# ---- VGG with BatchNorm as in the CRD benchmark (vgg8: one conv per stage) ----

class VGG(nn.Module):
    def __init__(self, convs_per_stage: tuple[int, ...], in_channels: int):
        super().__init__()
        widths = (64, 128, 256, 512, 512)
        layers, in_ch = [], in_channels
        for stage, (count, width) in enumerate(zip(convs_per_stage, widths)):
            for _ in range(count):
                layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                in_ch = width
            if stage < len(widths) - 1:
                # ceil_mode keeps a 1x1 map at 1x1, so small inputs (digits) still work
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.body = nn.Sequential(*layers)
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)


class TorchvisionResNet(nn.Module):
    """torchvision ResNet-18/34 for ImageNet-size inputs, its fc removed."""

    def __init__(self, depth: int, in_channels: int):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.out_channels = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _cifar_resnet(depth: int, widths=(16, 16, 32, 64)) -> Callable[[int], nn.Module]:
    return lambda in_channels: CifarResNet(depth, widths, in_channels)


MODEL_REGISTRY: dict[str, Callable[[int], nn.Module]] = {
    **{f"resnet{d}": _cifar_resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _cifar_resnet(8, (32, 64, 128, 256)),
    # half the width of resnet8 (about a quarter of its parameters): a student well below its teacher
    "resnet8x0.5": _cifar_resnet(8, (8, 8, 16, 32)),
    "resnet32x4": _cifar_resnet(32, (32, 64, 128, 256)),
    "wrn_16_2": lambda c: WideResNet(16, 2, c),
    "wrn_40_2": lambda c: WideResNet(40, 2, c),
    "vgg8": lambda c: VGG((1, 1, 1, 1, 1), c),
    "vgg13": lambda c: VGG((2, 2, 2, 2, 2), c),
    "resnet18": lambda c: TorchvisionResNet(18, c),
    "resnet34": lambda c: TorchvisionResNet(34, c),
}

# The input side each family was designed for (used by tests and docs; any side >= 8 runs).
NATIVE_INPUT_SIZE = {name: (224 if name in ("resnet18", "resnet34") else 32) for name in MODEL_REGISTRY}


def build_model(name: str, num_classes: int, in_channels: int = 3, model_args: Optional[Mapping[str, Any]] = None,
                weights: Optional[Mapping[str, torch.Tensor]] = None) -> Network:
    """A network by name: a zoo name (MODEL_REGISTRY), `torchvision:NAME`, `timm:NAME` or
    `package.module:factory` (see `foreign_module`), with `model_args` for the latter three.
    `weights`: a state dict in the network's own layout (torchvision / timm key names), loaded
    before the network is adapted, so its classifier becomes the main head."""
    if name in MODEL_REGISTRY:
        if model_args:
            raise ValueError(f"model {name!r} is augtune's own and takes no model_args")
        if weights is not None:
            raise ValueError(f"model {name!r}: weights in a network's own layout are for torchvision:, timm: and "
                             "module:factory networks; augtune's own are loaded from augtune checkpoints")
        backbone = MODEL_REGISTRY[name](in_channels)
        return Network(backbone, backbone.out_channels, num_classes)
    module = foreign_module(name, model_args or {})
    if isinstance(module, Network):  # the user's factory already speaks augtune's protocol
        if module.num_classes != num_classes:
            raise ValueError(f"model {name!r} returned a Network with {module.num_classes} classes; the data has "
                             f"{num_classes}")
        network = module
        if weights is not None:
            network.load_state_dict(weights)
    else:
        if weights is not None:
            module = module_for_weights(name, model_args or {}, weights, module)
            load_own_layout(module, weights, name)
        network = adapt(module, num_classes, in_channels, name)
    network.model_args = dict(model_args or {})
    return network


# ---- any network: torchvision, timm, the user's own module ----
#
# The adapter splits a foreign network into a feature extractor and its classifier: torchvision's
# last Linear under `fc`, `classifier` or `heads`; timm's `get_classifier()` / `reset_classifier(0)`;
# a user's module in either layout, or an augtune `Network`. The classifier's weights become the
# main head when their size fits. Data with other than 3 channels (the grayscale digits): the
# first 3-channel convolution is adapted, its weights summed over the colour channels for 1 channel
# (what timm does for `in_chans=1`), repeated and rescaled for more.

def check_model_name(name: str) -> None:
    """Refuse a model name that names no network (ValueError), without building anything."""
    if name in MODEL_REGISTRY:
        return
    foreign_module(name, {}, build=False)


def foreign_module(name: str, model_args: Mapping[str, Any], build: bool = True) -> Optional[nn.Module]:
    """The network `torchvision:NAME`, `timm:NAME` or `package.module:factory` names, built with
    `model_args` (torchvision's / timm's keyword arguments, or the factory's); build=False only
    checks that it exists."""
    source, _, target = name.partition(":")
    if not target:
        raise ValueError(f"unknown model {name!r}: give a zoo name ({', '.join(sorted(MODEL_REGISTRY))}), "
                         "torchvision:NAME, timm:NAME or package.module:factory")
    if source == "torchvision":
        import torchvision

        if target not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"model {name!r}: torchvision has no classification model {target!r}")
        return torchvision.models.get_model(target, weights=None, **model_args) if build else None
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise ValueError(f"model {name!r} needs timm: pip install 'augtune[timm]'") from None
        if not timm.is_model(target):
            raise ValueError(f"model {name!r}: timm has no model {target!r} (timm.list_models() lists them)")
        return timm.create_model(target, pretrained=False, **model_args) if build else None

    try:
        factory = getattr(importlib.import_module(source), target)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {name!r}: cannot import {target!r} from {source!r} ({exc}); give an importable "
                         "package.module:factory") from None
    if not callable(factory):
        raise ValueError(f"model {name!r}: {source}.{target} is not callable; give a factory that returns the network")
    if not build:
        return None
    module = factory(**model_args)
    if not isinstance(module, nn.Module):
        raise ValueError(f"model {name!r}: {source}.{target}(...) returned {type(module).__name__}, not a torch module")
    return module


def read_own_weights(path) -> dict[str, torch.Tensor]:
    """A state dict in a network's own layout from `.pth` / `.pt` (weights-only unpickling: a
    pickle that would run code is refused) or `.safetensors`; a `{"state_dict": ...}` or
    `{"model": ...}` wrapper is unwrapped. ValueError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package "
                             "(pip install safetensors)") from None
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-running pickles, others for junk
        raise ValueError(f"{path} is not a plain state dict (only tensors are read; a pickle that would run code "
                         f"is refused): {str(exc).splitlines()[0][:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return state


def pretrained_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's / timm's own pretrained weights, from their local caches only (no download):
    a missing file is a ValueError naming where it is expected."""
    source, _, target = name.partition(":")
    if source == "torchvision":
        import torchvision

        try:
            url = torchvision.models.get_model_weights(target).DEFAULT.url
        except (ValueError, AttributeError):
            raise ValueError(f"model {name!r}: torchvision has no pretrained weights for it") from None
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if not cached.is_file():
            raise ValueError(f"model {name!r}: pretrained weights are not in torchvision's cache ({cached}); "
                             f"download {url} there, or give teacher.weights")
        return read_own_weights(cached)
    if source == "timm":
        import timm
        from huggingface_hub import constants

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            return timm.create_model(target, pretrained=True).state_dict()
        except Exception as exc:  # timm / huggingface_hub raise many kinds offline
            raise ValueError(f"model {name!r}: timm's pretrained weights are not in the local cache "
                             f"({constants.HF_HUB_CACHE}): {str(exc).splitlines()[0][:200]}") from None
    raise ValueError(f"model {name!r}: pretrained weights come with torchvision: and timm: networks; give "
                     "teacher.weights for others")


@dataclass(frozen=True)
class InputSpec:
    """The input a network's weights expect: a square side and per-channel normalisation
    statistics of [0, 1] pixels."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def pretrained_input(name: str, model_args: Optional[Mapping[str, Any]] = None) -> Optional[InputSpec]:
    """The input side and normalisation of `name`'s pretrained weights: torchvision's default
    weights' evaluation transforms (crop size, mean, std), timm's pretrained config (input_size,
    mean, std; `model_args.img_size` when given, as it sets the network's side). None for augtune's
    own networks, the user's modules, and names that name nothing (refused elsewhere)."""
    source, _, target = name.partition(":")
    if source == "torchvision":
        import torchvision

        try:
            transforms = torchvision.models.get_model_weights(target).DEFAULT.transforms()
            side, mean, std = transforms.crop_size[0], transforms.mean, transforms.std
        except (ValueError, AttributeError, KeyError, IndexError):
            return None
    elif source == "timm":
        try:
            import timm.models
        except ImportError:
            return None
        cfg = timm.models.get_pretrained_cfg(target, allow_unregistered=False) if timm.is_model(target) else None
        if cfg is None or not cfg.input_size or cfg.input_size[1] != cfg.input_size[2]:
            return None  # no config, or a non-square input (the data section then decides)
        side, mean, std = cfg.input_size[-1], cfg.mean, cfg.std
        img_size = (model_args or {}).get("img_size")
        if isinstance(img_size, int) and not isinstance(img_size, bool):
            side = img_size
    else:
        return None
    return InputSpec(int(side), tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _classifier_of(module: nn.Module) -> Optional[nn.Linear]:
    try:
        if hasattr(module, "get_classifier"):  # timm
            classifier = module.get_classifier()
        else:
            classifier = _classifier_slot(module)[2]
    except ValueError:
        return None
    return classifier if isinstance(classifier, nn.Linear) else None


def classes_in_weights(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> Optional[int]:
    """How many classes the classifier in `weights` has (read at the key of `module`'s classifier)."""
    classifier = _classifier_of(module)
    key = next((f"{n}.weight" for n, m in module.named_modules() if m is classifier), None)
    tensor = weights.get(key) if key else None
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim == 2 else None


def module_for_weights(name: str, model_args: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
                       module: Optional[nn.Module] = None) -> nn.Module:
    """The torchvision / timm network built for `weights`: with as many classes as their classifier
    has (a state dict fine-tuned for the user's own classes loads as it is) unless model_args sets
    num_classes. Other networks (the user's factories) are built as model_args say."""
    module = module if module is not None else foreign_module(name, model_args)
    if not name.startswith(("torchvision:", "timm:")) or "num_classes" in model_args:
        return module
    own, theirs = _classifier_of(module), classes_in_weights(module, weights)
    if own is not None and theirs is not None and theirs != own.out_features:
        return foreign_module(name, {**model_args, "num_classes": theirs})
    return module


def load_own_layout(module: nn.Module, weights: Mapping[str, torch.Tensor], name: str) -> None:
    """Load a state dict in the network's own key layout; every key must match."""
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise ValueError(f"model {name!r}: the weights do not fit this architecture: "
                         f"{' '.join(line.strip() for line in first[:3])[:400]}") from None


def _classifier_slot(module: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, the final Linear) of a torchvision-style classifier."""
    for attr in ("fc", "classifier", "heads", "head"):
        part = getattr(module, attr, None)
        if isinstance(part, nn.Linear):
            return module, attr, part
        if isinstance(part, nn.Sequential):  # by child name: ViT's `heads` names its Linear "head"
            linears = [(name, m) for name, m in part.named_children() if isinstance(m, nn.Linear)]
            if linears:
                name, linear = linears[-1]
                return part, name, linear
        if isinstance(part, nn.Module) and isinstance(getattr(part, "head", None), nn.Linear):
            return part, "head", part.head
    raise ValueError("cannot find this network's classifier: expected a Linear at `fc`, `classifier`, `heads` or "
                     "`head` (torchvision's layouts), timm's get_classifier(), or an augtune Network")


def _adapt_first_conv(module: nn.Module, in_channels: int) -> None:
    for parent in module.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return
                if child.in_channels != 3 or child.groups != 1:
                    raise ValueError(f"the first convolution takes {child.in_channels} channels; the data has "
                                     f"{in_channels} and only 3-channel inputs are adapted")
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, bias=child.bias is not None, padding_mode=child.padding_mode)
                with torch.no_grad():
                    w = child.weight
                    if in_channels == 1:
                        conv.weight.copy_(w.sum(dim=1, keepdim=True))
                    else:
                        repeats = -(-in_channels // 3)
                        conv.weight.copy_(w.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels))
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, attr, conv)
                return


def adapt(module: nn.Module, num_classes: int, in_channels: int, name: str = "model") -> Network:
    """A foreign classification network as an augtune Network (see above)."""
    try:
        _adapt_first_conv(module, in_channels)
        if hasattr(module, "reset_classifier") and hasattr(module, "get_classifier"):  # timm
            classifier = module.get_classifier()
            module.reset_classifier(0)
            feature_dim = getattr(module, "head_hidden_size", None) or module.num_features
        else:
            parent, attr, classifier = _classifier_slot(module)
            setattr(parent, attr, nn.Identity())
            feature_dim = classifier.in_features
    except ValueError as exc:
        raise ValueError(f"model {name!r}: {exc}") from None
    network = Network(module, feature_dim, num_classes)
    network.source_classes = classifier.out_features if isinstance(classifier, nn.Linear) else None
    if network.source_classes == num_classes and classifier.in_features == feature_dim:
        network.heads["main"].load_state_dict(classifier.state_dict())
    return network
