"""imagezoo: image classification with pretrained residual networks.

The public API; everything the command line does is one of these calls::

    import imagezoo
    model = imagezoo.load_model("efficientnet_lite0")
    for result in imagezoo.classify(model, ["photo.jpg"], top=5):
        print(result.input, result.predictions[0].label)

``import imagezoo`` is quick and does not import PyTorch: each name below is imported from its
module on first use (PEP 562), so a program (or the ``imagezoo`` command) that only lists
models, reads a card or manages the cache never pays for PyTorch.
"""
from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ModelCard": "imagezoo.card",
    "Preprocess": "imagezoo.data.transforms",
    "DatasetError": "imagezoo.errors", "ImageDecodeError": "imagezoo.errors",
    "ImagezooError": "imagezoo.errors", "UnknownModelError": "imagezoo.errors",
    "WeightsError": "imagezoo.errors", "WeightsMismatchError": "imagezoo.errors",
    "WeightsNotAvailableError": "imagezoo.errors",
    "load_model": "imagezoo.loader",
    "save_model": "imagezoo.model_folder",
    "convert": "imagezoo.tasks.convert", "inspect_weights": "imagezoo.tasks.convert",
    "extract_features": "imagezoo.tasks.features", "iter_features": "imagezoo.tasks.features",
    "UnknownLayerError": "imagezoo.models.layers", "list_layers": "imagezoo.models.layers",
    "Evaluation": "imagezoo.tasks.evaluation", "evaluate": "imagezoo.tasks.evaluate",
    "FinetuneResult": "imagezoo.tasks.finetune", "finetune": "imagezoo.tasks.finetune",
    "Engine": "imagezoo.engine", "optimize": "imagezoo.engine",
    "ExportError": "imagezoo.export", "OnnxModel": "imagezoo.export",
    "TorchScriptModel": "imagezoo.export", "export_onnx": "imagezoo.export",
    "export_torchscript": "imagezoo.export",
    "ChecksumError": "imagezoo.weights.store", "DownloadError": "imagezoo.weights.store",
    "Prediction": "imagezoo.tasks.classify", "Ranked": "imagezoo.tasks.classify",
    "classify": "imagezoo.tasks.classify", "preprocess": "imagezoo.tasks.classify",
    "summary": "imagezoo.viz.summary", "explain": "imagezoo.viz.cam",
    "Explanation": "imagezoo.viz.cam",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
