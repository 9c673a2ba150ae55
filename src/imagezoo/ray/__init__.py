"""Batch inference on Ray Data: classify, features and evaluate over one machine or many.

    from imagezoo.ray import ModelSpec, run_classify
    run = run_classify(["photos/", "s3://bucket/photos/"], "efficientnet_lite0",
                       "results.parquet", top=5)                  # starts a local Ray instance
    run = run_classify(..., address="auto")                         # joins a running cluster

The package's modules: ``session.py`` (Ray itself), ``inputs.py`` (what to read),
``stages.py`` (decoding tasks, the model's actors), ``datasets.py`` (``classify_dataset``,
``features_dataset``), ``commands.py`` (the runners the CLI calls).

The pipeline, in Ray Data's terms:

1. paths: local files, folders and list files are expanded on the driver as every imagezoo
   command expands them (``data.sources.expand_sources``) and become rows of a dataset; any
   other URI Ray reads (``s3://``, ``gs://``, ``abfs://``, ``file://``, ...) goes to
   ``ray.data.read_binary_files(..., include_paths=True)``, which lists and reads it;
2. decoding and preprocessing in CPU tasks (``map_batches`` with plain functions): imagezoo's
   own guarded decoder (``data.images.decode_bytes``, or ``load_image`` for a local path or an
   http(s) URL) and the card's preprocessing in NumPy (``data.transforms.preprocess_array``,
   bit for bit the PyTorch path's), so a broken file is an error row, never a failed job;
3. the model in an actor pool (``ActorPoolStrategy``): each actor loads the model once (from a
   ``ModelSpec``: a name or file plus weights, or a model folder; optionally through
   ``imagezoo.optimize`` at the run's batch size), takes a GPU when the cluster has them, and
   is restarted when it dies and its batches run again (Ray Data's actor defaults:
   ``max_restarts=-1``, ``max_task_retries=-1``);
4. rows back to the driver, written as they come to a journal beside the output and, at the
   end, to one Parquet or JSON Lines file (``tasks/row_files.py``): every input exactly once,
   keyed by ``path``, in the order they finished (``ordered=True``: in the input's order).

Rows: ``classify`` gives ``path, rank, index, label, probability, error`` (one row per rank,
or one row with the ``error``); ``features`` gives ``path, <one column per layer>, error``
(flat float32 vectors; the layers' shapes are in the schema's metadata); ``evaluate`` gives
``path, target, predicted, error`` (``predicted``: the top-k class indices, best first) and
computes from them the ``imagezoo.evaluate`` figures.

The results are the single-process commands': the same decoding and error messages, the same
preprocessing, the same softmax and top-k code (``tasks.classify``), the same feature hooks.
``ray`` is an optional extra; without it these functions raise one ``ImagezooError`` line.
"""
from __future__ import annotations

from .commands import RayRun, RunOptions, evaluation_from_rows, run_classify, run_evaluate, run_features
from .common import DECODE_CPUS, RAY_MISSING, THREADS_PER_ACTOR_CPU
from .datasets import PoolOptions, classify_dataset, feature_shapes, features_dataset
from .inputs import Inputs, is_remote_uri, split_inputs
from .session import check_reachable, ray_session
from .stages import ModelSpec, ModelStage, decode_batch, model_source

__all__ = ["DECODE_CPUS", "Inputs", "ModelSpec", "ModelStage", "PoolOptions", "RAY_MISSING",
           "RayRun", "RunOptions", "THREADS_PER_ACTOR_CPU", "check_reachable", "classify_dataset",
           "decode_batch", "evaluation_from_rows", "feature_shapes", "features_dataset",
           "is_remote_uri", "model_source", "ray_session", "run_classify", "run_evaluate",
           "run_features", "split_inputs"]
