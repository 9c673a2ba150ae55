"""Batch inference on Ray Data (``imagezoo.ray``) against the single-process commands.

One local Ray instance for the module (2 CPUs, a 200 MB object store, no dashboard, on the
loopback address), shut down at the end. Real photos (the bundled ones and copies) and bad
files (empty, text named .jpg, a truncated JPEG, a missing file named in a list file) go
through ``run_classify``, ``run_features`` and ``run_evaluate``; the rows must be what
``imagezoo.classify``, ``extract_features`` and ``evaluate`` give. An actor that kills its
own process mid-run and a resumed run must still leave every input in the output once.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import imagezoo
from imagezoo.errors import ImagezooError

from conftest import ROOT

# Ray Data's own DataContext warns about its deprecated settings on first use.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

RESOURCES = ROOT / "src" / "imagezoo" / "resources"
IMPORTED_BEFORE = set(sys.modules)
# Ray on the loopback address only, whatever the machine's network address is (read when Ray
# is first imported, so before any test here imports it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
RAY_SKIP = "ray is not installed: pip install 'imagezoo[ray]' (make installs it)"
LAYERS = ["_blocks.15", "_avg_pooling"]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason=RAY_SKIP)
    pytest.importorskip("ray.data", reason=RAY_SKIP)
    import ray.cloudpickle
    # The fault-injecting model below lives in this test module, which Ray's workers cannot
    # import: ship its code with the pickled objects.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False)
    if "ray" not in IMPORTED_BEFORE:
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder of real photos, copies and bad files, and a list file that also names a file
    that is not there: the inputs of every run here."""
    folder = tmp_path_factory.mktemp("ray-photos")
    for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg", "cat.png"):
        shutil.copy(RESOURCES / name, folder / name)
    for copy in range(3):
        shutil.copy(RESOURCES / "coffee.jpg", folder / f"coffee-{copy}.jpg")
        shutil.copy(RESOURCES / "cat.png", folder / f"cat-{copy}.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture at all\n")
    jpeg = (RESOURCES / "rocket.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 3])
    listing = folder.parent / f"{folder.name}.list"
    listing.write_text(f"# one more photo and one that is not there\n"
                       f"{RESOURCES / 'astronaut.jpg'}\n{folder.name}/missing.jpg\n")
    return folder, [str(folder), str(listing)]


@pytest.fixture(scope="module")
def single_process(lite0, photos):
    """What one process gives for the same inputs: path -> Prediction."""
    results = imagezoo.classify(lite0, photos[1], top=5, batch_size=4, workers=0)
    return {result.input: result for result in results}


def rows_of(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def by_input(rows: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["path"]].append(row)
    return grouped


def assert_same_as_single_process(rows: list[dict], expected: dict) -> None:
    """Every input once, with the same error, or the same top-k within 1e-6."""
    grouped = by_input(rows)
    assert sorted(grouped) == sorted(expected)
    for path, prediction in expected.items():
        got = grouped[path]
        if prediction.error is not None:
            assert len(got) == 1 and got[0]["error"] == prediction.error, path
            assert got[0]["rank"] is None and got[0]["probability"] is None
            continue
        assert [row["error"] for row in got] == [None] * len(prediction.predictions), path
        got = sorted(got, key=lambda row: row["rank"])
        assert [(r["rank"], r["index"], r["label"]) for r in got] == \
            [(r.rank, r.index, r.label) for r in prediction.predictions], path
        np.testing.assert_allclose([r["probability"] for r in got],
                                   [r.probability for r in prediction.predictions],
                                   rtol=0, atol=1e-6, err_msg=path)


def test_without_ray_one_line_says_how_to_get_it(monkeypatch, tmp_path):
    import imagezoo.ray as izray  # importing the module never needs Ray
    monkeypatch.setitem(sys.modules, "ray", None)
    for call in (lambda: izray.run_classify(["x.jpg"], "efficientnet_lite0", tmp_path / "o.jsonl"),
                 lambda: izray.run_features(["x.jpg"], "efficientnet_lite0", tmp_path / "o.jsonl",
                                            LAYERS),
                 lambda: izray.run_evaluate(tmp_path, "efficientnet_lite0")):
        with pytest.raises(ImagezooError) as caught:
            call()
        assert str(caught.value) == "ray is not installed: pip install 'imagezoo[ray]'"
    assert not list(tmp_path.iterdir())


def test_an_address_where_nothing_answers_is_one_line(tmp_path):
    pytest.importorskip("ray", reason=RAY_SKIP)
    import socket
    from imagezoo.ray import run_classify
    with socket.socket() as probe:   # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ImagezooError, match=f"cannot join the Ray cluster at 127.0.0.1:{port}: "
                                            f"nothing answers there"):
        run_classify([str(RESOURCES / "cat.png")], "efficientnet_lite0",
                     tmp_path / "out.parquet", address=f"127.0.0.1:{port}")


def test_classify_equals_the_single_process_command(ray_local, photos, single_process, tmp_path):
    from imagezoo.ray import run_classify
    out = tmp_path / "results.parquet"
    run = run_classify(photos[1], "efficientnet_lite0", out, top=5, batch_size=4, actors=1)
    rows = rows_of(out)
    assert_same_as_single_process(rows, single_process)
    failed = {path: error for path, error in run.failures}
    assert failed == {p: r.error for p, r in single_process.items() if r.error}
    assert len(failed) == 4 and run.inputs == len(single_process) == 15
    assert not (tmp_path / "results.parquet.partial").exists()


def test_json_lines_in_input_order(ray_local, photos, single_process, tmp_path):
    from imagezoo.ray import ModelSpec, run_classify
    out = tmp_path / "results.jsonl"
    run_classify(photos[1], ModelSpec("efficientnet_lite0"), out, top=2, batch_size=3,
                 actors=1, ordered=True)
    rows = rows_of(out)
    assert list(by_input(rows)) == list(single_process)   # keys in the input's order
    assert len(rows) == 11 * 2 + 4
    assert_same_as_single_process(rows, {
        path: imagezoo.Prediction(path, r.predictions[:2] if r.ok else None, r.error)
        for path, r in single_process.items()})


def test_features_equal_extract_features(ray_local, lite0, photos, tmp_path):
    from imagezoo.ray import run_features
    import pyarrow.parquet as pq
    expected = imagezoo.extract_features(lite0, photos[1], LAYERS, pool="avg", batch_size=4,
                                         workers=0)
    out = tmp_path / "features.parquet"
    run = run_features(photos[1], "efficientnet_lite0", out, LAYERS, pool="avg", batch_size=4,
                       actors=1)
    table = pq.read_table(out)
    shapes = json.loads(table.schema.metadata[b"imagezoo.shapes"])
    assert shapes == {"_blocks.15": [320], "_avg_pooling": [1280]}
    rows = {row["path"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(expected.inputs + [p for p, _ in expected.failures])
    for index, path in enumerate(expected.inputs):
        assert rows[path]["error"] is None
        for layer in LAYERS:
            # float32 sums split over another thread count round differently: ~2e-6 here,
            # on values up to ~6
            np.testing.assert_allclose(rows[path][layer], expected[layer][index].numpy(),
                                       rtol=1e-5, atol=1e-5, err_msg=f"{path} {layer}")
    for path, error in expected.failures:
        assert rows[path]["error"] == error
        assert all(rows[path][layer] is None for layer in LAYERS)
    assert sorted(run.failures) == sorted(expected.failures)


def test_evaluate_equals_the_single_process_figures(ray_local, lite0, photos, tmp_path):
    from imagezoo.ray import run_evaluate
    folder = photos[0]
    mapping = folder.parent / "mapping.txt"   # paths relative to it, as in a real set
    labels = {"coffee.jpg": 967, "coffee-0.jpg": 967, "coffee-1.jpg": 968, "rocket.jpg": 657,
              "cat.png": 285, "cat-0.png": 282, "astronaut.jpg": 1, "cut.jpg": 657,
              "empty.jpg": 3, "notes.jpg": 4}
    mapping.write_text("".join(f"{folder.name}/{name}\t{label}\n"
                               for name, label in labels.items()))
    expected = imagezoo.evaluate(lite0, mapping, top=5, batch_size=4, workers=0)
    out = tmp_path / "rows.jsonl"
    result = run_evaluate(mapping, "efficientnet_lite0", out, top=5, batch_size=4, actors=1)
    assert result.to_dict() == expected.to_dict()
    assert expected.count == 7 and len(expected.failed) == 3
    rows = rows_of(out)
    assert len(rows) == len(labels)
    assert {row["target"] for row in rows if row["path"].endswith("coffee-1.jpg")} == {968}
    assert all(len(row["predicted"]) == 5 for row in rows if row["error"] is None)


class DiesOnce:
    """A model factory whose model kills its own process on its second batch, the first time
    any actor gets there (a marker file says it happened); each load is logged."""

    def __init__(self, marker: Path, loads: Path):
        self.marker, self.loads = str(marker), str(loads)

    def __call__(self):
        import torch

        class Dying(torch.nn.Module):
            def __init__(self, model, marker):
                super().__init__()
                self.model, self.card, self.marker, self.calls = model, model.card, marker, 0

            def forward(self, x):
                self.calls += 1
                if self.calls == 2:
                    try:
                        os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
                    except FileExistsError:
                        pass
                    else:
                        os._exit(1)   # the actor's process dies mid-run, as on a lost node
                return self.model(x)

        with open(self.loads, "a") as log:
            log.write(f"{os.getpid()}\n")
        return Dying(imagezoo.load_model("efficientnet_lite0"), self.marker)


def test_an_actor_that_dies_mid_run_is_restarted(ray_local, photos, single_process, tmp_path):
    from imagezoo.ray import run_classify
    marker, loads = tmp_path / "died", tmp_path / "loads"
    out = tmp_path / "results.parquet"
    run = run_classify(photos[1], DiesOnce(marker, loads), out, top=5, batch_size=2, actors=1)
    assert marker.exists(), "the actor never died: the test tested nothing"
    pids = loads.read_text().split()
    assert len(pids) >= 3 and str(os.getpid()) in pids   # the driver, the actor, its restart
    rows = rows_of(out)
    assert_same_as_single_process(rows, single_process)   # every input once, same results
    assert run.inputs == len(single_process)


def test_resume_processes_only_what_is_missing(ray_local, photos, single_process, tmp_path):
    from imagezoo.ray import run_classify
    folder, inputs = photos
    out = tmp_path / "results.jsonl"
    first = sorted(str(p) for p in folder.glob("coffee*.jpg")) + [str(folder / "empty.jpg")]
    run_classify(first, "efficientnet_lite0", out, top=5, batch_size=4, actors=1)
    written = out.read_text()
    assert len(by_input(rows_of(out))) == 5

    run = run_classify(inputs, "efficientnet_lite0", out, top=5, batch_size=4, actors=1,
                       resume=True)
    assert run.resumed == 5 and run.inputs == len(single_process)
    assert out.read_text().startswith(written)   # the rows of the first run are kept as they were
    assert_same_as_single_process(rows_of(out), single_process)

    again = run_classify(inputs, "efficientnet_lite0", out, top=5, resume=True)
    assert again.resumed == again.inputs == len(single_process)   # nothing left: Ray not needed


def test_resume_after_a_run_was_stopped_mid_write(ray_local, photos, single_process, tmp_path):
    """A stopped run leaves its journal (OUT.partial) with a torn last batch: the complete
    batches are kept, the torn one is done again, and every input ends up once."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from imagezoo.ray import run_classify
    from imagezoo.tasks.row_files import RowJournal, journal_path, read_rows
    folder, inputs = photos
    done = tmp_path / "done.parquet"
    run_classify([str(folder / "cat.png"), str(folder / "rocket.jpg"), str(folder / "cut.jpg")],
                 "efficientnet_lite0", done, top=5, actors=1)
    with pytest.raises(ImagezooError, match="other settings"):
        run_classify(inputs, "efficientnet_lite0", done, top=3, resume=True)

    out = tmp_path / "results.parquet"
    schema = pq.read_schema(done)   # with the run's settings in its metadata
    journal = RowJournal(out, schema)
    for batch in read_rows(done, schema):
        table = pa.Table.from_batches([batch])
        for path in dict.fromkeys(table.column("path").to_pylist()):
            journal.add(table.filter(pa.compute.equal(table.column("path"), path)))
    journal.close()   # stopped: no final file, only the journal
    partial = journal_path(out)
    partial.write_bytes(partial.read_bytes()[:-40])   # the last input's batch torn
    assert not out.exists()

    run = run_classify(inputs, "efficientnet_lite0", out, top=5, batch_size=4, actors=1,
                       resume=True)
    assert run.resumed == 2
    assert not partial.exists()
    assert_same_as_single_process(rows_of(out), single_process)


def test_remote_uris_go_through_rays_reader(ray_local, photos, single_process, tmp_path):
    """A ``scheme://`` URI (here ``file://``; ``s3://`` and the others take the same path) is
    listed and read by ``ray.data.read_binary_files``; rows are keyed by the URI."""
    from imagezoo.ray import run_classify
    folder = photos[0]
    out = tmp_path / "results.parquet"
    run = run_classify([f"file://{folder}/"], "efficientnet_lite0", out, top=5, batch_size=4,
                       actors=1)
    expected = {f"file://{path}": imagezoo.Prediction(
        f"file://{path}", r.predictions,
        None if r.error is None else r.error.replace(path, f"file://{path}"))
        for path, r in single_process.items() if Path(path).parent == folder
        and Path(path).exists()}
    assert_same_as_single_process(rows_of(out), expected)
    assert run.inputs == len(expected) == 13


def test_an_address_joins_a_running_cluster(ray_local, photos, single_process, tmp_path):
    """``--ray ADDRESS``: another process joins the instance this module started, as a
    driver joins a real cluster (``ray start --head`` prints the address to give)."""
    import subprocess
    address = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "joined.parquet"
    code = ("import sys; from imagezoo.ray import run_classify; "
            "run = run_classify(sys.argv[3:], 'efficientnet_lite0', sys.argv[2], top=5, "
            "address=sys.argv[1], batch_size=4, actors=1); print(run.inputs, len(run.failures))")
    done = subprocess.run([sys.executable, "-c", code, address, str(out), *photos[1]],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["15", "4"]
    assert "Connecting to existing Ray cluster" in done.stderr
    assert_same_as_single_process(rows_of(out), single_process)
    assert ray_local.cluster_resources().get("CPU") == 2   # the joined driver left it running


def test_ten_crops_equal_the_single_process_command(ray_local, lite0, photos, tmp_path):
    from imagezoo.ray import run_classify
    folder = photos[0]
    inputs = [str(folder / name) for name in ("cat.png", "rocket.jpg", "astronaut.jpg", "cut.jpg")]
    expected = {r.input: r for r in imagezoo.classify(lite0, inputs, top=3, ten_crop=True,
                                                       batch_size=2, workers=0)}
    out = tmp_path / "ten.parquet"
    run_classify(inputs, "efficientnet_lite0", out, top=3, ten_crop=True, batch_size=2, actors=1)
    assert_same_as_single_process(rows_of(out), expected)


def test_the_cli_runs_classify_on_ray_and_reports_like_the_single_process(
        ray_local, photos, single_process, tmp_path, capsys):
    from imagezoo.cli import main
    out = tmp_path / "results.jsonl"
    status = main(["classify", *photos[1], "--top", "3", "--out", str(out), "--ray"])
    err = capsys.readouterr().err
    failed = [p for p, r in single_process.items() if not r.ok]
    assert status == 1 and failed
    for path in failed:
        assert f"imagezoo: {single_process[path].error}" in err
    rows = rows_of(out)
    assert {row["path"] for row in rows} == set(single_process)
    firsts = {row["path"]: row["index"] for row in rows if row.get("rank") == 1}
    for path, result in single_process.items():
        if result.ok:
            assert firsts[path] == result.predictions[0].index
    assert main(["classify", *photos[1], "--ray"]) == 2
    assert "--ray writes its rows to a file" in capsys.readouterr().err


def test_a_cached_engine_or_shipped_graph_runs_on_ray_without_torch(ray_local, photos, tmp_path):
    """With ``backend="auto"``, the driver and the actors take the PyTorch-free engine that
    ``imagezoo classify`` would (here the shipped graph of the default model): the rows are
    those of the PyTorch-free single process, and the driver loads no PyTorch model."""
    from imagezoo.engine.light import LightEngine, find_light_engine
    from imagezoo.ray import ModelSpec, run_classify, run_evaluate
    from imagezoo.ray.commands import RunOptions, _light_or_loaded
    from imagezoo.ray.stages import model_source
    from imagezoo.tasks.light_classify import classify_light
    from imagezoo.tasks.light_evaluate import evaluate_light
    from imagezoo.data.sources import expand_sources
    spec = ModelSpec(backend="auto")
    assert isinstance(_light_or_loaded(model_source(spec), RunOptions(batch_size=4)), LightEngine)
    light = find_light_engine(None, None, "exact", "auto", 4)
    expected = {r.input: r for r in classify_light(light, expand_sources(photos[1]), top=5,
                                                   batch_size=4)}
    out = tmp_path / "light.parquet"
    run_classify(photos[1], spec, out, top=5, batch_size=4, actors=1)
    assert_same_as_single_process(rows_of(out), expected)
    folder = photos[0]
    mapping = folder.parent / "light-mapping.txt"
    mapping.write_text(f"{folder.name}/coffee.jpg\t967\n{folder.name}/cat.png\t282\n"
                       f"{folder.name}/cut.jpg\t657\n")
    result = run_evaluate(mapping, spec, tmp_path / "rows.jsonl", top=5, batch_size=4, actors=1)
    assert result.to_dict() == evaluate_light(light, mapping, top=5, batch_size=4).to_dict()
