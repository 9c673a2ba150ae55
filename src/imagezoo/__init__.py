"""imagezoo: image classification with pretrained residual networks.

The public API; everything the command line does is one of these calls::

    import imagezoo
    model = imagezoo.load_model("efficientnet_lite0")
    for result in imagezoo.classify(model, ["photo.jpg"], top=5):
        print(result.input, result.predictions[0].label)
"""
__version__ = "0.1.0"

from .card import ModelCard  # noqa: E402
from .data.transforms import Preprocess  # noqa: E402
from .errors import (  # noqa: E402
    DatasetError, ImageDecodeError, ImagezooError, UnknownModelError, WeightsError,
    WeightsMismatchError, WeightsNotAvailableError,
)
from .loader import load_model  # noqa: E402
from .model_folder import save_model  # noqa: E402
from .tasks.convert import convert, inspect_weights  # noqa: E402
from .tasks.features import extract_features, iter_features  # noqa: E402
from .models.layers import UnknownLayerError, list_layers  # noqa: E402
from .tasks.evaluate import Evaluation, evaluate  # noqa: E402
from .tasks.finetune import FinetuneResult, finetune  # noqa: E402
from .engine import Engine, optimize  # noqa: E402
from .export import (  # noqa: E402
    ExportError, OnnxModel, TorchScriptModel, export_onnx, export_torchscript,
)
from .weights.store import ChecksumError, DownloadError  # noqa: E402
from .tasks.classify import Prediction, Ranked, classify, preprocess  # noqa: E402

__all__ = [
    "ChecksumError", "DownloadError", "convert", "inspect_weights", "save_model",
    "Engine", "optimize", "ExportError", "OnnxModel", "TorchScriptModel", "export_onnx", "export_torchscript",
    "Evaluation", "FinetuneResult", "finetune", "UnknownLayerError", "evaluate", "extract_features", "iter_features", "list_layers",
    "DatasetError", "ImageDecodeError", "ImagezooError", "ModelCard", "Prediction", "Preprocess",
    "Ranked", "UnknownModelError", "WeightsError", "WeightsMismatchError",
    "WeightsNotAvailableError", "classify", "load_model", "preprocess",
]
