"""Fine-tuning on scikit-learn's real digits: the result, its equivalences, checkpoints, scale-out."""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import imagezoo
from imagezoo.cli import main
from imagezoo.demo import write_digits
from imagezoo.errors import DatasetError, ImagezooError
from imagezoo.models.resnet import ResNet, ResNetSpec
from imagezoo.tasks.progress import ProgressTable
from imagezoo.weights.torch_state import read_state_dict


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    return write_digits(tmp_path_factory.mktemp("digits"), train_per_class=12, test_per_class=6)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, digits) -> Path:
    """12 training digits of 3 classes: enough to compare training paths exactly."""
    train, _ = digits
    lines = [line for line in train.read_text().splitlines() if line.split("\t")[1] in "012"]
    mapping = train.parent / "small.txt"
    mapping.write_text("\n".join(lines[:4] + lines[12:16] + lines[24:28]) + "\n")
    return mapping


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A narrow random ResNet saved as a model folder: fast, and any weights will do here."""
    torch.manual_seed(0)
    model = ResNet(ResNetSpec(block="basic", layers=(1, 1, 1, 1), width=8, num_classes=1000))
    card = imagezoo.load_model("resnet18", weights="random").card
    card.architecture, card.name = model.spec.to_dict(), "tiny"
    return imagezoo.save_model(model, tmp_path_factory.mktemp("tiny") / "tiny", card)


@pytest.fixture(scope="module")
def lite0_64(tmp_path_factory) -> Path:
    """The default model (EfficientNet-Lite0: its ImageNet weights, its batch norm and dropout)
    reading 64x64 inputs instead of 224x224: the same layers for a tenth of the work."""
    model = imagezoo.load_model("efficientnet_lite0")
    preprocess = dataclasses.replace(model.card.preprocess, resize=64, crop=64)
    card = dataclasses.replace(model.card, name="lite0-64", preprocess=preprocess)
    return imagezoo.save_model(model, tmp_path_factory.mktemp("lite0") / "lite0-64", card)


def head_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_state_dict(folder / "weights.safetensors").items() if k.startswith("fc.")}


def assert_same_weights(folder: Path, other: Path) -> None:
    """Bit for bit, every tensor of the saved model (batch-norm buffers included)."""
    a, b = read_state_dict(folder / "weights.safetensors"), read_state_dict(other / "weights.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def test_pretrained_backbone_beats_a_random_one_by_far(digits, tmp_path):
    train, test = digits
    errors = {}
    for name, weights in (("pretrained", None), ("random", "random")):
        torch.manual_seed(0)
        base = imagezoo.load_model("efficientnet_lite0", weights=weights)
        result = imagezoo.finetune(train, tmp_path / name, model=base, test=test, epochs=60, lr=0.1,
                                   log_stream=None)
        errors[name] = result.test_error
        assert result.test_count == 60
    assert errors["pretrained"] < 0.5, errors
    assert errors["random"] - errors["pretrained"] > 0.3, errors


def test_cached_features_equal_training_through_the_network(small_set, tiny_model, tmp_path):
    settings = dict(model=tiny_model, epochs=3, lr=0.05, batch_size=5, seed=3, log_stream=None, workers=0)
    cached = imagezoo.finetune(small_set, tmp_path / "cached", **settings)
    full = imagezoo.finetune(small_set, tmp_path / "full", cache_features=False, **settings)
    for name, value in head_weights(tmp_path / "cached").items():
        torch.testing.assert_close(value, head_weights(tmp_path / "full")[name], rtol=1e-5, atol=1e-6)
    assert [r.loss for r in cached.history] == pytest.approx([r.loss for r in full.history], rel=1e-5)
    # The backbone is untouched.
    base = imagezoo.load_model(tiny_model)
    tuned = imagezoo.load_model(tmp_path / "cached")
    assert torch.equal(base.layer4[0].conv2.weight, tuned.layer4[0].conv2.weight)
    assert tuned.card.labels == ["0", "1", "2"] and tuned.fc.out_features == 3


def test_same_seed_same_weights_other_seed_other_weights(small_set, tiny_model, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        imagezoo.finetune(small_set, tmp_path / name, model=tiny_model, epochs=2, seed=seed,
                          batch_size=4, log_stream=None, workers=0)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    a, c = head_weights(tmp_path / "a"), head_weights(tmp_path / "c")
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_progress_table_history_and_model_folder(digits, tiny_model, tmp_path, capsys):
    train, test = digits
    out = tmp_path / "run"
    code = main(["finetune", "--train", str(train), "--test", str(test), "--model", str(tiny_model),
                 "--epochs", "2", "--lr", "0.05", "--out", str(out), "--json", "--workers", "0"])
    assert code == 0
    captured = capsys.readouterr()
    table = captured.err.splitlines()
    assert table[0].split() == ["epoch", "average", "loss", "since", "last", "metric", "examples",
                                "learning", "rate"]
    assert table[1].split()[0] == "1/2" and table[1].split()[4] == "120"
    assert table[2].split()[4] == "240" and table[2].split()[5] == "0.05"
    assert any(line.startswith("Finished evaluation: metric = ") and line.endswith("% * 60")
               for line in table)
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [e["event"] for e in events] == ["epoch", "epoch", "evaluation"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history == events
    assert set(os.listdir(out)) >= {"weights.safetensors", "card.json", "checkpoint.pt", "history.jsonl"}
    card = json.loads((out / "card.json").read_text())
    assert card["labels"] == [str(i) for i in range(10)]
    assert card["preprocess"] == imagezoo.load_model(tiny_model).card.preprocess.to_dict()
    # The folder is a model every task accepts.
    model = imagezoo.load_model(out)
    assert imagezoo.classify(model, test.parent / "0_0000.png" if (test.parent / "0_0000.png").exists()
                             else sorted(test.parent.glob("*.png"))[0])[0].ok
    assert imagezoo.evaluate(model, test, workers=0).count == 60
    assert imagezoo.extract_features(model, sorted(test.parent.glob("*.png"))[:2], ["avgpool"])["avgpool"].shape[0] == 2


def test_an_existing_run_needs_resume(small_set, tiny_model, tmp_path, capsys):
    imagezoo.finetune(small_set, tmp_path / "run", model=tiny_model, epochs=1, log_stream=None, workers=0)
    code = main(["finetune", "--train", str(small_set), "--model", str(tiny_model), "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and "pass --resume" in capsys.readouterr().err
    with pytest.raises(ImagezooError, match="other settings.*lr 0.01 -> 0.5"):
        imagezoo.finetune(small_set, tmp_path / "run", model=tiny_model, epochs=2, lr=0.5,
                          resume=True, log_stream=None, workers=0)


@pytest.mark.parametrize("content, message", [
    ("a.png\t0\nb.png\n", "line 2"),
    ("a.png\t0\nb.png\tseven\n", "line 2"),
    ("a.png\t0\nb.png\t0\n", "at least two classes"),
    ("", "no images"),
])
def test_bad_data_fails_before_training(tmp_path, content, message, capsys):
    for name in ("a.png", "b.png"):
        shutil.copy(Path(imagezoo.__file__).parent / "resources" / "cat.png", tmp_path / name)
    mapping = tmp_path / "map.txt"
    mapping.write_text(content)
    with pytest.raises(DatasetError, match=message):
        imagezoo.finetune(mapping, tmp_path / "out", log_stream=None)
    assert not (tmp_path / "out").exists()
    assert main(["finetune", "--train", str(mapping), "--out", str(tmp_path / "out2")]) == 2
    assert "map.txt" in capsys.readouterr().err


def test_unreadable_images_are_reported_with_their_lines(small_set, tiny_model, tmp_path, capsys):
    mapping = tmp_path / "with_broken.txt"
    lines = [f"{small_set.parent / line}" for line in small_set.read_text().splitlines()]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    mapping.write_text("\n".join(lines[:6] + ["broken.png\t1"] + lines[6:]) + "\n")
    result = imagezoo.finetune(mapping, tmp_path / "out", model=tiny_model, epochs=1, workers=0)
    assert f"{mapping} line 7" in capsys.readouterr().err
    assert result.history[0].examples == 12


def run_cli(arguments: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "imagezoo", *arguments], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


class Interrupted(Exception):
    pass


def interrupt_at_the_first_progress_line(self, record):
    # The progress table prints an epoch's line right after its checkpoint is written.
    raise Interrupted(f"stopped after epoch {record.epoch}")


TRAINING_OPTIONS = {
    "frozen": dict(model="tiny"),  # the head on cached features
    "augment": dict(model="tiny", augment=True, workers=2),  # crops drawn in worker processes
    "freeze none": dict(model="lite0", freeze="none"),  # dropout and batch norm in training mode
    "freeze none, augment, adamw": dict(model="lite0", freeze="none", augment=True, optimizer="adamw",
                                        lr=0.001),
}


@pytest.mark.parametrize("option", TRAINING_OPTIONS)
def test_same_seed_same_weights_and_an_interrupted_run_resumes_to_them(
        option, small_set, tiny_model, lite0_64, tmp_path, monkeypatch):
    """Two runs in one process (whose global random state has moved on in between) and a run
    interrupted after its first checkpoint and resumed end with the same weights, bit for bit."""
    settings = dict(epochs=2, batch_size=4, lr=0.02, seed=7, workers=0, log_stream=None)
    settings |= TRAINING_OPTIONS[option]
    settings["model"] = {"tiny": tiny_model, "lite0": lite0_64}[settings["model"]]
    first = imagezoo.finetune(small_set, tmp_path / "first", **settings)
    assert all(math.isfinite(r.loss) for r in first.history)
    imagezoo.finetune(small_set, tmp_path / "second", **settings)
    assert_same_weights(tmp_path / "first", tmp_path / "second")

    with monkeypatch.context() as patch:
        patch.setattr(ProgressTable, "epoch", interrupt_at_the_first_progress_line)
        with pytest.raises(Interrupted, match="after epoch 1"):
            imagezoo.finetune(small_set, tmp_path / "resumed", **settings)
    assert not (tmp_path / "resumed" / "weights.safetensors").exists()
    resumed = imagezoo.finetune(small_set, tmp_path / "resumed", resume=True, **settings)
    assert [r.loss for r in resumed.history] == [r.loss for r in first.history]
    assert_same_weights(tmp_path / "first", tmp_path / "resumed")
    if settings.get("freeze") == "none":  # the backbone did train
        base, tuned = imagezoo.load_model(lite0_64), imagezoo.load_model(tmp_path / "first")
        assert not torch.equal(base._blocks[3]._bn1.running_var, tuned._blocks[3]._bn1.running_var)
        assert not torch.equal(base._conv_stem.weight, tuned._conv_stem.weight)


@pytest.mark.parametrize("option, keywords, epochs", [(["--augment"], dict(augment=True), 3),
                                                      (["--freeze", "none"], dict(freeze="none"), 2)],
                         ids=["augment", "freeze none"])
def test_killed_run_resumes_to_the_uninterrupted_weights(small_set, tmp_path, option, keywords, epochs):
    """The default model at its full input size (so an epoch takes a while: augmented training
    recomputes the features, --freeze none trains through the dropout and the batch norms) is
    killed as soon as its first checkpoint lands, then resumed in another process."""
    settings = ["--train", str(small_set), "--epochs", str(epochs), *option, "--batch-size", "4",
                "--lr", "0.02", "--seed", "5", "--workers", "0"]
    out = tmp_path / "killed"
    process = run_cli(["finetune", *settings, "--out", str(out)])
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(checkpoint, weights_only=True)
    assert len(saved["records"]) < epochs, "the run finished before it could be interrupted"
    assert not (out / "weights.safetensors").exists()
    assert main(["finetune", *settings, "--out", str(out), "--resume"]) == 0
    imagezoo.finetune(small_set, tmp_path / "straight", epochs=epochs, batch_size=4, lr=0.02, seed=5,
                      workers=0, log_stream=None, **keywords)
    assert_same_weights(out, tmp_path / "straight")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))


def test_two_processes_match_one(small_set, tiny_model, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    settings = ["--train", str(small_set), "--model", str(tiny_model), "--epochs", "3",
                "--batch-size", "5", "--lr", "0.05", "--seed", "2", "--workers", "0"]
    done = subprocess.run([str(torchrun), "--nproc_per_node=2", "--standalone", "-m", "imagezoo",
                           "finetune", *settings, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Finished") == 0 and done.stderr.count("3/3") == 1  # rank 0 prints
    assert main(["finetune", *settings, "--out", str(tmp_path / "one")]) == 0
    two, one = head_weights(tmp_path / "two"), head_weights(tmp_path / "one")
    history = {name: [json.loads(line) for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]
               for name in ("one", "two")}
    assert [h["examples"] for h in history["two"]] == [12, 24, 36]
    for a, b in zip(history["one"], history["two"]):
        assert a["metric"] == b["metric"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


def test_two_processes_reproduce_themselves_with_dropout_and_augmentation(small_set, lite0_64, tmp_path):
    """--freeze none --augment on two processes: the dropout masks and batch-norm statistics
    are each process's own, so this is not one process's result; but a run of one epoch
    resumed (in new processes) for a second ends with the weights of a two-epoch run. Batches
    of 11 of the 12 images leave the second process without an example in each last step."""
    torchrun = Path(sys.executable).parent / "torchrun"
    settings = ["--train", str(small_set), "--model", str(lite0_64), "--freeze", "none", "--augment",
                "--batch-size", "11", "--lr", "0.02", "--seed", "3", "--workers", "0"]

    def run(*arguments: str) -> None:
        done = subprocess.run([str(torchrun), "--nproc_per_node=2", "--standalone", "-m", "imagezoo",
                               "finetune", *settings, *arguments],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run("--epochs", "2", "--out", str(tmp_path / "straight"))
    run("--epochs", "1", "--out", str(tmp_path / "resumed"))
    run("--epochs", "2", "--out", str(tmp_path / "resumed"), "--resume")
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    history = [json.loads(line) for line in (tmp_path / "resumed" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["examples"] == 24


def test_resuming_with_other_threads_says_the_result_will_differ(small_set, tiny_model, tmp_path):
    settings = dict(model=tiny_model, epochs=1, log_stream=None, workers=0)
    imagezoo.finetune(small_set, tmp_path / "run", **settings)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["threads"] == torch.get_num_threads() and checkpoint["world_size"] == 1
    checkpoint["threads"] += 3
    torch.save(checkpoint, tmp_path / "run" / "checkpoint.pt")
    stream = io.StringIO()
    imagezoo.finetune(small_set, tmp_path / "run", resume=True,
                      **(settings | dict(epochs=2, log_stream=stream)))
    assert (f"started with 1 process(es) of {torch.get_num_threads() + 3} thread(s) and resumes with "
            f"1 of {torch.get_num_threads()}") in stream.getvalue()


def test_resume_refuses_other_classes_and_out_refuses_a_model(small_set, tiny_model, tmp_path):
    imagezoo.finetune(small_set, tmp_path / "run", model=tiny_model, epochs=1, log_stream=None, workers=0)
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("".join(f"{small_set.parent / line}\n" for line in small_set.read_text().splitlines()[:8]))
    with pytest.raises(ImagezooError, match="was trained on the classes"):
        imagezoo.finetune(fewer, tmp_path / "run", model=tiny_model, epochs=2, resume=True,
                          log_stream=None, workers=0)
    with pytest.raises(ImagezooError, match="already holds a model"):
        imagezoo.finetune(small_set, tiny_model, model=tiny_model, epochs=1, log_stream=None)
    assert oct((tmp_path / "run" / "card.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@pytest.mark.parametrize("option, value", [("lr", float("nan")), ("momentum", -1.0), ("lr", 0.0),
                                           ("seed", -1)])
def test_bad_options_are_refused(small_set, tmp_path, option, value):
    with pytest.raises(ImagezooError, match=option):
        imagezoo.finetune(small_set, tmp_path / "out", **{option: value}, log_stream=None)


def test_large_seeds_work_with_augmentation(small_set, tiny_model, tmp_path):
    result = imagezoo.finetune(small_set, tmp_path / "out", model=tiny_model, epochs=1, augment=True,
                               seed=20240601, log_stream=None, workers=0)
    assert result.history[0].examples == 12
