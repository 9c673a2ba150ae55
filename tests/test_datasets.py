"""Labelled sets: mapping files, classes files and class folders, and every way they go wrong."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagezoo import DatasetError
from imagezoo.data.datasets import (
    LabelledSet, check_trainable, read_class_folders, read_classes_file, read_labelled_set,
    read_mapping_file,
)


def write_image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """A data folder with a few images, some in a subfolder."""
    for name in ("a.png", "b.jpg", "sub/c.png", "sub/d.png"):
        write_image(tmp_path / "data" / name)
    return tmp_path / "data"


def expect_error(path: Path, line: int | None, message: str):
    """pytest.raises for a DatasetError naming the file, the line and the problem."""
    where = re.escape(f"{path} line {line}") if line is not None else re.escape(str(path))
    return pytest.raises(DatasetError, match=f"{where}.*{message}")


def test_mapping_file_relative_paths_comments_blank_lines_and_whitespace(images):
    mapping = images / "mapping.txt"
    mapping.write_text(
        "# path<TAB>label\n"
        "a.png\t0\n"
        "\n"
        "   # an indented comment\n"
        "sub/c.png\t2\r\n"          # Windows line end
        "b.jpg   1\n"               # spaces instead of a tab: fine when the path has none
        f"{images / 'sub' / 'd.png'}\t 1 \n"   # absolute path, spaces around the label
        "key7\tsub/d.png\t0\n",     # CNTK's three-column form: sequence key first
        encoding="utf-8")
    labelled = read_mapping_file(mapping)
    assert labelled.items == [(str(images / "a.png"), 0), (str(images / "sub" / "c.png"), 2),
                              (str(images / "b.jpg"), 1), (str(images / "sub" / "d.png"), 1),
                              (str(images / "sub" / "d.png"), 0)]
    assert labelled.lines == [2, 5, 6, 7, 8]
    assert labelled.classes == ["0", "1", "2"]
    assert labelled.source == str(mapping) and len(labelled) == 5
    assert labelled.describe(1) == f"{mapping} line 5"


def test_mapping_file_relative_to_its_own_folder_not_the_working_directory(images, tmp_path,
                                                                          monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text("../data/a.png\t0\n../data/sub/c.png\t1\n")
    monkeypatch.chdir(tmp_path / "data" / "sub")
    labelled = read_mapping_file(lists / "val.txt")
    assert [Path(p).resolve() for p in labelled.paths] == [(images / "a.png").resolve(),
                                                           (images / "sub" / "c.png").resolve()]


def test_num_classes_sets_the_range_and_the_class_names(images):
    (images / "m.txt").write_text("a.png\t1\n")
    labelled = read_mapping_file(images / "m.txt", num_classes=4)
    assert labelled.classes == ["0", "1", "2", "3"]


def test_byte_order_mark_is_ignored(images):
    (images / "m.txt").write_bytes("\ufeffa.png\t0\n".encode("utf-8"))
    assert read_mapping_file(images / "m.txt").labels == [0]


@pytest.mark.parametrize("line, message", [
    ("a.png", r"expected 2 columns \(path, label\), found 1"),
    ("a.png 1 2", r"found 3; separate them with a tab"),
    ("my cat.png 1", r"found 3; separate them with a tab"),
    ("k\ta.png\t1\textra", r"expected 2 tab-separated columns .*found 4"),
    ("a.png\tcat", r"label 'cat' is not an integer"),
    ("a.png\t1.0", r"label '1.0' is not an integer"),
    ("a.png\t-1", r"label -1 is negative"),
    ("a.png\t5", r"label 5 is out of range \(0..4 for 5 classes\)"),
    ("missing.png\t0", r"image missing.png not found"),
    ("sub\t0", r"image sub not found"),          # a folder is not an image
])
def test_mapping_file_errors_name_the_file_and_line(images, line, message):
    mapping = images / "mapping.txt"
    mapping.write_text(f"# header\na.png\t0\n\n{line}\nb.jpg\t1\n")
    with expect_error(mapping, 4, message):
        read_mapping_file(mapping, num_classes=5)


def test_every_problem_is_found_before_reporting(images):
    mapping = images / "mapping.txt"
    mapping.write_text("a.png\tx\n" + "".join(f"gone{i}.png\t0\n" for i in range(7)))
    with pytest.raises(DatasetError) as caught:
        read_mapping_file(mapping)
    message = str(caught.value)
    assert f"{mapping} line 1: label 'x'" in message and f"{mapping} line 5: image gone3.png" in message
    assert "line 6" not in message and "and 3 more problem(s)" in message


def test_label_range_comes_from_the_classes_file(images):
    classes = images / "classes.txt"
    classes.write_text("cat\ndog\n")
    mapping = images / "mapping.txt"
    mapping.write_text("a.png\t1\nb.jpg\t2\n")
    with expect_error(mapping, 2, r"label 2 is out of range \(0..1 for 2 classes\)"):
        read_mapping_file(mapping, classes_file=classes)
    mapping.write_text("a.png\t1\nb.jpg\t0\n")
    assert read_mapping_file(mapping, classes_file=classes).classes == ["cat", "dog"]
    with pytest.raises(DatasetError, match=r"classes file .*classes.txt has 2 names, but 3"):
        read_mapping_file(mapping, classes_file=classes, num_classes=3)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "\n\n"])
def test_empty_mapping_file(images, text):
    mapping = images / "mapping.txt"
    mapping.write_text(text)
    with expect_error(mapping, None, "lists no images"):
        read_mapping_file(mapping)


def test_unreadable_mapping_files(images):
    with pytest.raises(DatasetError, match=r"absent.txt: no such mapping file"):
        read_mapping_file(images / "absent.txt")
    binary = images / "binary.txt"
    binary.write_bytes(b"a.png\t0\n\xff\xfe\t1\n")
    with expect_error(binary, 2, "not UTF-8"):
        read_mapping_file(binary)


def test_classes_file_takes_the_first_token_of_each_line(tmp_path):
    classes = tmp_path / "LOC_synset_mapping.txt"
    classes.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
                       "n01484850\tgreat white shark\n\n\n")
    assert read_classes_file(classes) == ["n01440764", "n01443537", "n01484850"]


def test_classes_file_errors(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n\ndog\n")
    with expect_error(classes, 2, "blank line"):
        read_classes_file(classes)
    classes.write_text("\n \n")
    with expect_error(classes, None, "names no classes"):
        read_classes_file(classes)
    with pytest.raises(DatasetError, match="absent.txt: no such classes file"):
        read_classes_file(tmp_path / "absent.txt")


@pytest.fixture
def class_folders(tmp_path) -> Path:
    root = tmp_path / "train"
    write_image(root / "zebra" / "z1.png")
    write_image(root / "cat" / "deep" / "er" / "c2.jpg")
    write_image(root / "cat" / "c1.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    write_image(root / "dog" / "d1.bmp")
    write_image(root / ".ipynb_checkpoints" / "x.png")   # hidden: not a class
    return root


def test_class_folders_are_sorted_and_searched_recursively(class_folders):
    labelled = read_class_folders(class_folders)
    root = class_folders
    assert labelled.classes == ["cat", "dog", "zebra"]
    assert labelled.items == [(str(root / "cat" / "c1.png"), 0),
                              (str(root / "cat" / "deep" / "er" / "c2.jpg"), 0),
                              (str(root / "dog" / "d1.bmp"), 1), (str(root / "zebra" / "z1.png"), 2)]
    assert labelled.lines == [None] * 4 and labelled.source == str(root)
    assert labelled.describe(2) == str(root / "dog" / "d1.bmp")


def test_class_folders_mapped_through_a_class_list(class_folders):
    classes = ["bird", "zebra", "dog", "cat", "fish"]
    labelled = read_class_folders(class_folders, classes)
    assert labelled.classes == classes
    assert labelled.labels == [3, 3, 2, 1]


def test_class_folder_not_in_the_class_list_is_named(class_folders):
    with pytest.raises(DatasetError, match=rf"{re.escape(str(class_folders))}: class folder\(s\) "
                                           r"'zebra' not among the 3 class names"):
        read_class_folders(class_folders, ["cat", "dog", "horse"])


def test_class_folder_matching_two_names_is_ambiguous(class_folders):
    with pytest.raises(DatasetError, match=r"class folder 'dog' matches classes 1, 3"):
        read_class_folders(class_folders, ["cat", "dog", "zebra", "dog"])


def test_empty_class_folder_keeps_its_index_with_a_warning(class_folders, caplog):
    (class_folders / "cow").mkdir()
    with caplog.at_level(logging.WARNING):
        labelled = read_class_folders(class_folders)
    assert labelled.classes == ["cat", "cow", "dog", "zebra"]
    assert labelled.labels == [0, 0, 2, 3]
    assert "class folder 'cow' holds no images" in caplog.text


def test_class_folder_errors(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with expect_error(root, None, "no class subfolders"):
        read_class_folders(root)
    write_image(root / "loose.png")
    with expect_error(root, None, r"no class subfolders \(1 images lie directly in it"):
        read_class_folders(root)
    (root / "cat").mkdir()
    (root / "dog").mkdir()
    with expect_error(root, None, r"no images in its class folders \(cat, dog\)"):
        read_class_folders(root)
    with pytest.raises(DatasetError, match="absent: no such folder"):
        read_class_folders(tmp_path / "absent")


def test_read_labelled_set_dispatches_on_folder_or_file(class_folders, tmp_path):
    assert read_labelled_set(class_folders).classes == ["cat", "dog", "zebra"]
    classes = tmp_path / "classes.txt"
    classes.write_text("zebra stripes\ncat\ndog\n")
    assert read_labelled_set(class_folders, classes_file=classes).labels == [1, 1, 2, 0]
    assert read_labelled_set(class_folders, classes=["dog", "cat", "zebra"]).labels == [1, 1, 0, 2]
    with pytest.raises(DatasetError, match="3 classes, but 5 are expected"):
        read_labelled_set(class_folders, num_classes=5)
    mapping = class_folders / "map.txt"
    mapping.write_text("cat/c1.png\t1\n")
    labelled = read_labelled_set(mapping, classes=["a", "b"])
    assert labelled.items == [(str(class_folders / "cat" / "c1.png"), 1)]
    assert labelled.classes == ["a", "b"] and labelled.lines == [1]
    with pytest.raises(DatasetError, match="not both"):
        read_labelled_set(mapping, classes=["a", "b"], classes_file=classes)
    with pytest.raises(DatasetError, match="nothing-here: no such mapping file or folder"):
        read_labelled_set(tmp_path / "nothing-here")


def test_check_trainable(images):
    (images / "m.txt").write_text("a.png\t1\nb.jpg\t1\n")
    one_class = read_mapping_file(images / "m.txt", num_classes=3)
    with pytest.raises(DatasetError, match=r"m.txt: only class '1'; .*at least two classes"):
        check_trainable(one_class)
    two = LabelledSet([(str(images / "a.png"), 0), (str(images / "b.jpg"), 2)], ["x", "y", "z"],
                      "made by hand")
    check_trainable(two)
    assert two.lines == [None, None]
