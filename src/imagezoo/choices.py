"""The choices imagezoo's commands and functions offer, kept free of PyTorch so that the
command line's grammar (``imagezoo --help``) is built without importing it. Each list is
defined here once; the modules that act on them import it from here."""

# Inference backends, in the order ``auto`` tries them (see engine/backends.py).
BACKENDS = ("torch", "torch-fast", "onnxruntime", "openvino")
# exact: float32 within 1e-4 of PyTorch; fast: bf16/int8 where the top-1 holds (engine/).
PRECISIONS = ("exact", "fast")
# Spatial reductions of a feature map (tasks/features.py).
POOLS = ("avg", "max")
# Publishers whose weights ``--pretrained`` fetches (weights/published.py).
PUBLISHERS = ("torchvision", "matconvnet", "paddle_v1", "akamaster")

# The batch size of the inference commands. Small batches keep the pipeline full: the model
# starts on the first images while the workers decode the next ones, and a run ends with one
# small batch rather than a large one on a single core. Measured here (2 cores, 64 photos of
# 1600x1200, EfficientNet-Lite0 fast): 121 img/s at batch 8 against 89 at batch 32, and the
# engines run batch 8 at nearly their batch-32 rate per image.
INFERENCE_BATCH = 8

# The model a command runs when none is named (registry.py has its card and weights).
DEFAULT_MODEL = "efficientnet_lite0"
# Where ``imagezoo serve`` listens unless told otherwise (serve/).
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
