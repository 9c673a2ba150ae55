"""Reading torch.save files without PyTorch (weights/numpy_state.py): the same tensors as
``torch.load(weights_only=True)`` (through ``torch_state.read_state_dict``, which unwraps,
renames and casts them), bit for bit, and the same refusals."""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from imagezoo.errors import WeightsError
from imagezoo.models.registry import efficientnet_lite0_file
from imagezoo.weights.numpy_state import read_arrays, state_dict_kind
from imagezoo.weights.torch_state import read_state_dict

from conftest import ROOT

SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"


def assert_same_tensors(path) -> dict[str, np.ndarray]:
    """``read_arrays(path)`` holds exactly ``read_state_dict(path)``: keys, dtypes, values."""
    arrays, tensors = read_arrays(path), read_state_dict(path)
    assert sorted(arrays) == sorted(tensors)
    for name, tensor in tensors.items():
        expected = tensor.detach().numpy()
        assert arrays[name].dtype == expected.dtype, name
        assert arrays[name].shape == expected.shape, name
        assert arrays[name].flags.c_contiguous and arrays[name].flags.writeable, name
        assert np.array_equal(arrays[name], expected, equal_nan=True), name
    return arrays


def test_the_default_models_legacy_file_reads_as_torch_reads_it():
    arrays = assert_same_tensors(efficientnet_lite0_file())
    assert arrays["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert arrays["_bn0.num_batches_tracked"].dtype == np.int64


def shared_weight_files() -> list[Path]:
    return sorted([*SHARED_WEIGHTS.rglob("*.pth"), *SHARED_WEIGHTS.rglob("*.th")])


@pytest.mark.parametrize("name", [path.name for path in shared_weight_files()] or ["absent"])
def test_the_published_files_read_as_torch_reads_them(name):
    if name == "absent":
        pytest.skip(f"no .pth/.th files under {SHARED_WEIGHTS} (../shared is not beside the "
                    f"project)")
    [path] = [path for path in shared_weight_files() if path.name == name]
    arrays = assert_same_tensors(path)
    # akamaster's names (DataParallel's module., the head called linear) become imagezoo's
    assert "fc.weight" in arrays and not any(k.startswith(("module.", "linear.")) for k in arrays)


def awkward_state_dict() -> dict:
    """Tensors of every dtype and layout a state dict may hold: views with offsets and
    strides, transposes, scalars, empty ones, parameters, shared storages."""
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8) / 7 - 3
    return {
        "float": base.clone(),
        "half": (base * 1.37).half(),
        "bfloat16": (base * 3.1).bfloat16(),
        "double": base.double() / 3,
        "transposed_half": base.half().t(),
        "offset_view": base[2:, 3:],
        "strided_view": base[::2, 1::3],
        "bfloat16_view": base.bfloat16()[1:, ::2],
        "scalar": base[3, 4],
        "count": torch.tensor(7),
        "empty": torch.zeros(0, 5),
        "mask": base > 0,
        "bytes": torch.arange(10, dtype=torch.uint8),
        "int32": torch.arange(-5, 5, dtype=torch.int32),
        "parameter": torch.nn.Parameter(base[1]),
        "same_storage_again": base[1:3],
    }


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
def test_files_torch_save_writes_read_the_same(tmp_path, zip_layout):
    path = tmp_path / "awkward.pth"
    torch.save(awkward_state_dict(), path, _use_new_zipfile_serialization=zip_layout)
    arrays = assert_same_tensors(path)
    assert arrays["half"].dtype == arrays["bfloat16"].dtype == arrays["double"].dtype == np.float32
    assert arrays["scalar"].shape == () and arrays["empty"].shape == (0, 5)


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
def test_checkpoints_are_unwrapped_and_renamed_as_torch_state_does(tmp_path, zip_layout):
    state = OrderedDict([("module.conv1.weight", torch.randn(16, 3, 3, 3)),
                         ("module.layer2.0.shortcut.0.weight", torch.randn(32, 16, 1, 1)),
                         ("module.layer2.0.shortcut.1.running_var", torch.rand(32)),
                         ("module.linear.weight", torch.randn(10, 64).half()),
                         ("module.linear.bias", torch.randn(10))])
    path = tmp_path / "checkpoint.th"
    torch.save({"state_dict": state, "best_prec1": 91.7, "epoch": 3}, path,
               _use_new_zipfile_serialization=zip_layout)
    arrays = assert_same_tensors(path)
    assert sorted(arrays) == ["conv1.weight", "fc.bias", "fc.weight",
                              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var"]


def test_safetensors_files_read_the_same(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "weights.safetensors"
    tensors = {key: value.detach().contiguous() for key, value in awkward_state_dict().items()
               if key not in ("same_storage_again",)}
    save_file(tensors, str(path))
    assert_same_tensors(path)
    assert state_dict_kind(path) == "safetensors"


class CreatesAFile:
    """Unpickling this opens (creates) a file: what a hostile weight file would do."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


@pytest.mark.parametrize("layout", ["zip", "legacy", "plain pickle"])
def test_a_pickle_that_calls_anything_else_is_refused_without_running_it(tmp_path, layout):
    target = tmp_path / "created-by-the-pickle"
    path = tmp_path / "hostile.pth"
    payload = {"conv1.weight": torch.zeros(2), "payload": CreatesAFile(target)}
    if layout == "plain pickle":  # (pickle itself would write the tensor as a torch global)
        path.write_bytes(pickle.dumps({"payload": CreatesAFile(target)}, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=layout == "zip")
    with pytest.raises(WeightsError, match=r"refused to load.*global (io|builtins)\.open"):
        read_arrays(path)
    assert not target.exists()
    with pytest.raises(WeightsError):  # torch's own reader refuses it too
        read_state_dict(path)
    assert not target.exists()


def write_zip_pickle(path: Path, obj, storages: dict[str, bytes]) -> None:
    """A torch.save-style zip archive whose data.pkl is ``obj`` pickled as given, storages
    named by ``FakeStorage`` persistent ids: for files torch.save would never write."""
    buffer = io.BytesIO()

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if isinstance(value, FakeStorage):
                return ("storage", torch.FloatStorage, value.key, "cpu", value.numel)
            return None

    Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)


class FakeStorage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def test_a_tensor_pointing_past_its_storage_is_refused(tmp_path):
    data = np.arange(6, dtype="<f4").tobytes()
    path = tmp_path / "fits.pth"
    write_zip_pickle(path, {"a": FakeTensor(FakeStorage("0", 6), 1, (2, 2), (2, 1))}, {"0": data})
    np.testing.assert_array_equal(read_arrays(path)["a"], [[1, 2], [3, 4]])
    assert_same_tensors(path)
    for offset, size, stride in [(3, (2, 2), (2, 1)), (0, (7,), (1,)), (0, (2, 2), (5, 1))]:
        path = tmp_path / "outside.pth"
        write_zip_pickle(path, {"a": FakeTensor(FakeStorage("0", 6), offset, size, stride)},
                         {"0": data})
        with pytest.raises(WeightsError, match="past the end of its storage|more elements"):
            read_arrays(path)


def test_a_small_file_cannot_ask_for_a_huge_array(tmp_path):
    # One float broadcast to 50000 x 50000 (stride 0) would be a 10 GB copy.
    path = tmp_path / "broadcast.pth"
    write_zip_pickle(path, {"a": FakeTensor(FakeStorage("0", 1), 0, (50000, 50000), (0, 0))},
                     {"0": np.ones(1, "<f4").tobytes()})
    with pytest.raises(WeightsError, match="more elements than its storage"):
        read_arrays(path)


def rezip(source: Path, target: Path, compression: int = zipfile.ZIP_STORED,
          twice: str | None = None) -> Path:
    """``source``'s records in a new archive: compressed, or with one record named twice."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", compression) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
            if info.filename == twice:
                new.writestr(info.filename, old.read(info))
    return target


def test_zip_records_must_be_stored_once_as_torch_save_writes_them(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.arange(6.0)}, whole)
    np.testing.assert_array_equal(read_arrays(rezip(whole, tmp_path / "copy.pth"))["w"],
                                  np.arange(6.0, dtype=np.float32))
    # Deflated: zipfile would inflate it whatever its size; PyTorch writes records stored.
    with pytest.raises(WeightsError, match="compressed; torch.save stores them"):
        read_arrays(rezip(whole, tmp_path / "deflated.pth", zipfile.ZIP_DEFLATED))
    with pytest.raises(WeightsError, match="names a record twice"):
        with pytest.warns(UserWarning):   # zipfile's own "Duplicate name" warning
            duplicated = rezip(whole, tmp_path / "twice.pth", twice="whole/data/0")
        read_arrays(duplicated)


def test_negative_storage_sizes_are_refused(tmp_path):
    path = tmp_path / "negative.pth"
    write_zip_pickle(path, {"a": FakeTensor(FakeStorage("0", -4), 0, (1,), (1,))},
                     {"0": np.ones(4, "<f4").tobytes()})
    with pytest.raises(WeightsError, match="invalid size"):
        read_arrays(path)


@pytest.mark.parametrize("module, name", [("torch._utils", "_rebuild_tensor_v2"),
                                          ("torch", "FloatStorage"), ("_codecs", "encode")])
def test_a_pickle_cannot_change_an_allowed_global(tmp_path, module, name):
    """BUILD on a global would set its attributes (a function's ``__defaults__``, a storage
    class's dtype) for the rest of the process: refused, and nothing changed."""
    import imagezoo.weights.numpy_state as numpy_state
    defaults = numpy_state._rebuild_tensor_v2.__defaults__
    state = pickle.dumps((None, {"__defaults__": (True, None, None), "dtype": "f2"}), protocol=2)
    body = b"\x80\x02c" + f"{module}\n{name}\n".encode() + state[2:-1] + b"b."
    path = tmp_path / "build.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", body)
    with pytest.raises(WeightsError, match="state set on"):
        read_arrays(path)
    assert numpy_state._rebuild_tensor_v2.__defaults__ == defaults
    assert numpy_state.STORAGE_DTYPES["FloatStorage"] == "f4"


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
def test_truncated_files_are_weights_errors(tmp_path, zip_layout):
    whole = tmp_path / "whole.pth"
    torch.save(awkward_state_dict(), whole, _use_new_zipfile_serialization=zip_layout)
    data = whole.read_bytes()
    for cut in (len(data) // 3, len(data) - 5):
        path = tmp_path / "cut.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="truncated|no such|refused"):
            read_arrays(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit
def test_what_is_not_a_state_dict_is_said_so(tmp_path):
    assert state_dict_kind(efficientnet_lite0_file()) == "torch"
    assert state_dict_kind(tmp_path) is None
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    assert state_dict_kind(scripted) is None
    with pytest.raises(WeightsError, match="TorchScript"):
        read_arrays(scripted)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert state_dict_kind(text) is None
    with pytest.raises(WeightsError, match="neither"):
        read_arrays(text)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(WeightsError, match="holds no"):
        read_arrays(empty)


def test_reading_imports_no_torch():
    import subprocess
    import sys
    code = (f"from imagezoo.weights.numpy_state import read_arrays\n"
            f"read_arrays({str(efficientnet_lite0_file())!r})\n"
            f"import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"('torch', 'onnx')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
