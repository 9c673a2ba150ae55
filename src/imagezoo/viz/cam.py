"""Class-activation heat maps: where in the photo the evidence for a class lies.

Three methods, each giving one non-negative map per explained class at the resolution of a
layer's output (``A``, C x h x w), for the class score ``y`` = the logit before the softmax:

* ``gradcam`` (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017): channel weights ``w_k = mean_ij dy/dA_kij``, map
  ``ReLU(sum_k w_k A_k)``.
* ``gradcam++`` (Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual
  Explanations for Deep Convolutional Networks", WACV 2018, eq. 19 with the exponential
  score): with ``g = dy/dA``, ``alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (0 where the
  denominator is 0), ``w_k = sum_ij alpha_kij ReLU(g_kij)``, map ``ReLU(sum_k w_k A_k)``.
* ``cam`` (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016):
  for a network that ends in global average pooling and one linear layer, the classifier's
  weights for the class over the pooled feature map, ``ReLU(sum_k W_ck A_k)``. The feature map
  is the input of that pooling (``layer4`` of a ResNet; for EfficientNet-Lite the ReLU6 output
  of its 1x1 head convolution, which no module returns: shown as ``input of _avg_pooling``).

Each map is then divided by its maximum (a map that is zero everywhere stays zero), so
``heatmap`` is in 0..1 with 1 at the strongest evidence; ``heatmap_input`` is it resized
bilinearly (``align_corners=False``) to the model input, the card's preprocessed crop.

The layer is any name ``imagezoo layers`` lists, or a Caffe/Paddle alias (``res5c``,
``res5_3``); a Paddle ``_bn`` alias includes its ReLU, as Paddle's layer does. By default the
last convolutional stage: ``layer4`` for a ResNet, the last block (``_blocks.15``) for
EfficientNet-Lite0.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import Preprocess, crop_box, tensorflow_crop_box
from ..errors import ImagezooError
from ..models.efficientnet_lite import EfficientNetLite
from ..models.heads import head_of
from ..models.layers import resolve_layers
from ..models.resnet import ResNet
from ..tasks.classify import preprocess
from .photo import as_photo

METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "cam": "CAM"}


@dataclass
class Explanation:
    index: int                    # the class explained
    label: str
    probability: float            # softmax probability of that class
    layer: str                    # the layer whose output was used, as named
    method: str                   # gradcam | gradcam++ | cam
    heatmap: np.ndarray           # h x w float32 in 0..1, at the layer's resolution
    heatmap_input: np.ndarray     # H x W float32 in 0..1, at the model input
    input_box: tuple[float, float, float, float] | None = None
    # ^ (left, top, right, bottom) of the model input in the photo's pixels, when known

    def to_dict(self) -> dict:
        """The figures without the arrays (save those with ``numpy.save``)."""
        row, column = np.unravel_index(int(np.argmax(self.heatmap_input)), self.heatmap_input.shape)
        return {"index": self.index, "label": self.label, "probability": self.probability,
                "layer": self.layer, "method": self.method,
                "heatmap_shape": list(self.heatmap.shape),
                "input_shape": list(self.heatmap_input.shape),
                "peak": {"x": int(column), "y": int(row)}}


def explain(model: nn.Module, image, layer: str | None = None,
            target: int | str | list[int | str] | None = None, top: int = 1,
            method: str = "gradcam") -> list[Explanation]:
    """Heat maps of why ``model`` predicts what it does for one image (see the module docstring).

    ``image``: a path, URL, PIL image or H x W x 3 uint8 array, preprocessed with
    ``model.card``; or a 1 x 3 x H x W tensor taken as already preprocessed. ``target``: the
    class(es) to explain, as indices or labels; by default the ``top`` most probable ones.
    Returns one ``Explanation`` per class, in the order asked (most probable first by default).
    """
    if method not in METHODS:
        raise ImagezooError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    card = getattr(model, "card", None)
    x, box = _model_input(image, card)
    parameter = next(model.parameters(), None)
    if parameter is not None:
        x = x.to(parameter.device, parameter.dtype)
    name = layer if layer is not None else default_layer(model)
    [ref] = resolve_layers(model, [name])
    if ref.after == "softmax":
        raise ImagezooError(f"layer {name!r} is the softmax output, not a feature map")
    if target is not None and card is not None:
        _targets(target, top, None, card)    # a wrong class fails before any arithmetic
    captured: dict[str, torch.Tensor] = {}

    def keep_output(_module, _inputs, output):
        activation = torch.relu(output) if ref.after == "relu" else output
        captured["layer"] = activation
        # The rest of the network gets a copy: an in-place ReLU after this layer must not
        # change the values (or the autograd version) of the activation kept here.
        return activation.clone()

    def keep_pool_input(_module, inputs):
        captured["pooled"] = inputs[0]

    hooks = [model.get_submodule(ref.module).register_forward_hook(keep_output)]
    pool_name, pool = _global_pool(model) if method == "cam" else (None, None)
    if pool is not None:
        hooks.append(pool.register_forward_pre_hook(keep_pool_input))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)   # a graph even if every weight is frozen
            logits = model(x)
            if logits.dim() != 2:
                raise ImagezooError(f"{type(model).__name__} does not give class scores")
            probabilities = torch.softmax(logits.detach().float(), dim=1)[0]
            classes = _targets(target, top, probabilities, card)
            activation = captured["layer"]
            if activation.dim() != 4:
                raise ImagezooError(f"layer {name!r} gives a {tuple(activation.shape)} output, "
                                    f"not a feature map (channels x height x width)")
            if method == "cam":
                activation, name = _cam_features(model, captured, name, layer, pool_name)
            maps = [_class_map(method, model, logits[0, index], activation, index)
                    for index in classes]
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    labels = card.labels if card is not None else None
    return [Explanation(index=index, label=labels[index] if labels else str(index),
                        probability=float(probabilities[index]), layer=name, method=method,
                        heatmap=heat.numpy(), heatmap_input=_upsample(heat, x.shape[-2:]),
                        input_box=box)
            for index, heat in zip(classes, maps)]


def default_layer(model: nn.Module) -> str:
    """The last convolutional stage: ``layer4`` (ResNet), the last block (EfficientNet-Lite),
    else the last module whose output is a feature map larger than 1 x 1."""
    if isinstance(model, ResNet):
        return f"layer{model.num_stages}"
    if isinstance(model, EfficientNetLite):
        return f"_blocks.{len(model._blocks) - 1}"
    from .summary import measure
    size = getattr(getattr(model, "card", None), "preprocess", Preprocess()).input_size or 224
    shapes, _ = measure(model, (1, 3, size, size))
    maps = [path for path, shape in shapes.items() if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not maps:
        raise ImagezooError(f"{type(model).__name__} has no layer with a feature map to explain")
    return maps[-1]


def overlay(photo, explanation: Explanation, out_path: str | os.PathLike) -> Path:
    """The heat map resized onto the photo and drawn over it, as a 700 x 600 PNG, with the
    class, its probability, the method and the layer in the title.

    The map covers the part of the photo the model saw (``explanation.input_box``: the card's
    centre crop, outlined with a dashed line when it is not the whole photo), resized to it
    bilinearly; its colour scale (matplotlib's ``inferno``, which darkens steadily towards 0
    and so reads in grey as well) runs from 0 to 1 with the strongest evidence at 1."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .plots import DPI, STYLE, save_png

    picture = as_photo(photo)
    width, height = picture.size
    left, top, right, bottom = explanation.input_box or (0.0, 0.0, float(width), float(height))
    box_width, box_height = max(1, round(right - left)), max(1, round(bottom - top))
    heat = F.interpolate(torch.from_numpy(explanation.heatmap)[None, None].float(),
                         size=(box_height, box_width), mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1).numpy()
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(7, 6), dpi=DPI, layout="constrained")
        axes = figure.subplots()
        axes.imshow(np.asarray(picture), extent=(0, width, height, 0))
        shown = axes.imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.55,
                            extent=(left, right, bottom, top), interpolation="nearest")
        if (left, top, right, bottom) != (0.0, 0.0, float(width), float(height)):
            axes.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False,
                                     edgecolor="white", linestyle="--", linewidth=1.2))
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)
        axes.set_axis_off()
        axes.set_title(f"{explanation.label}  {100 * explanation.probability:.1f}%\n"
                       f"{METHODS[explanation.method]} on {explanation.layer}")
        figure.colorbar(shown, ax=axes, shrink=0.8, label="evidence for the class (relative)")
        return save_png(figure, out_path)


def _model_input(image, card) -> tuple[torch.Tensor, tuple[float, float, float, float] | None]:
    if isinstance(image, torch.Tensor):
        if image.dim() != 4 or image.shape[0] != 1:
            raise ImagezooError(f"a preprocessed input must be 1 x 3 x H x W, not {tuple(image.shape)}")
        return image, None
    if card is None:
        raise ImagezooError("the model has no card to preprocess the image with; "
                            "pass a preprocessed 1 x 3 x H x W tensor")
    photo = as_photo(image)
    return preprocess(photo, card), input_box(photo.size, card.preprocess)


def input_box(size: tuple[int, int], spec: Preprocess) -> tuple[float, float, float, float]:
    """Where the model's input lies in a photo of ``size`` (width, height): the card's resize
    (shorter side, truncated as torchvision does), zero padding, then the centre crop, undone;
    for a TensorFlow-style card (``crop_fraction``), the centre square it crops from the photo."""
    width, height = size
    if spec.crop_fraction is not None:
        return tuple(float(v) for v in tensorflow_crop_box(width, height, spec.crop_fraction))
    new_width, new_height = width, height
    if spec.resize is not None:
        if width <= height:
            new_width, new_height = spec.resize, int(spec.resize * height / width)
        else:
            new_width, new_height = int(spec.resize * width / height), spec.resize
    if spec.crop is None:
        return 0.0, 0.0, float(width), float(height)
    canvas_width, canvas_height = max(new_width, spec.crop), max(new_height, spec.crop)
    pad_left, pad_top = (canvas_width - new_width) // 2, (canvas_height - new_height) // 2
    left, top, right, bottom = crop_box(canvas_width, canvas_height, spec.crop)
    scale_x, scale_y = new_width / width, new_height / height
    return ((left - pad_left) / scale_x, (top - pad_top) / scale_y,
            (right - pad_left) / scale_x, (bottom - pad_top) / scale_y)


def _targets(target, top: int, probabilities: torch.Tensor | None, card) -> list[int]:
    count = probabilities.numel() if probabilities is not None else card.num_classes
    if target is None:
        if top < 1:
            raise ImagezooError(f"top must be at least 1, not {top}")
        return probabilities.topk(min(top, count)).indices.tolist()
    labels = list(card.labels) if card is not None else []
    chosen = []
    for wanted in target if isinstance(target, (list, tuple)) else [target]:
        if isinstance(wanted, str) and wanted in labels:
            chosen.append(labels.index(wanted))
            continue
        if isinstance(wanted, str) and not wanted.strip().isdigit():
            close = difflib.get_close_matches(wanted, labels, n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ImagezooError(f"the model has no class {wanted!r}{hint}")
        index = int(wanted)
        if not 0 <= index < count:
            raise ImagezooError(f"class {index} is out of range for a model with {count} classes")
        chosen.append(index)
    return chosen


def _global_pool(model: nn.Module) -> tuple[str, nn.Module]:
    try:
        head = head_of(model)
    except TypeError:
        raise ImagezooError(f"CAM needs a network that ends in global average pooling and "
                            f"one linear layer; {type(model).__name__} is not known to; "
                            f"use gradcam") from None
    pools = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))]
    if not pools or not isinstance(head, nn.Linear):
        raise ImagezooError("CAM needs global average pooling and a linear classifier; "
                            "use gradcam")
    return pools[-1]


def _cam_features(model, captured, name, layer, pool_name) -> tuple[torch.Tensor, str]:
    """CAM works on the feature map that is pooled into the classifier: the named layer's
    output when it is that map, else (for the default layer) the pooling's input."""
    pooled = captured["pooled"]
    same = captured["layer"].shape == pooled.shape and torch.equal(captured["layer"], pooled)
    if same:
        return captured["layer"], name
    if layer is not None:
        raise ImagezooError(f"CAM explains the feature map that is averaged into the "
                            f"classifier (the input of {pool_name}), not {layer!r}; "
                            f"use gradcam or gradcam++ for other layers")
    return pooled, f"input of {pool_name}"


def _class_map(method: str, model: nn.Module, score: torch.Tensor, activation: torch.Tensor,
               index: int) -> torch.Tensor:
    """One class's h x w map, after the ReLU and divided by its maximum."""
    features = activation.detach().float()[0]                       # C x h x w
    if method == "cam":
        weights = head_of(model).weight.detach().float()[index]     # C
        raw = torch.einsum("c,chw->hw", weights, features)
    else:
        [gradients] = torch.autograd.grad(score, activation, retain_graph=True)
        gradients = gradients.detach().float()[0]
        if method == "gradcam":
            weights = gradients.mean(dim=(1, 2))
        else:
            squared = gradients ** 2
            denominator = 2 * squared + features.sum(dim=(1, 2), keepdim=True) * squared * gradients
            alpha = torch.where(denominator != 0, squared / torch.where(
                denominator != 0, denominator, torch.ones_like(denominator)), 0.0)
            weights = (alpha * torch.relu(gradients)).sum(dim=(1, 2))
        raw = torch.einsum("c,chw->hw", weights, features)
    heat = torch.relu(raw)
    peak = heat.max()
    return (heat / peak if peak > 0 else heat).cpu()


def _upsample(heat: torch.Tensor, size) -> np.ndarray:
    resized = F.interpolate(heat[None, None], size=tuple(size), mode="bilinear",
                            align_corners=False)[0, 0]
    return resized.clamp(0, 1).numpy()


