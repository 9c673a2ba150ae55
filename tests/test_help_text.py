"""``imagezoo --help`` prints argparse's own text, kept in the cache after the first run so
that later runs need neither argparse nor the grammar (see cli/help_text.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imagezoo.cli import help_text
from imagezoo.cli.parser import build_parser

from conftest import ROOT


def rendered(columns: int) -> str:
    """What argparse prints for ``imagezoo --help`` at this width, in a fresh interpreter."""
    code = "from imagezoo.cli.parser import build_parser; print(build_parser().format_help(), end='')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": str(columns)}).stdout


def test_kept_help_is_argparses_text_and_later_runs_skip_the_grammar(tmp_path):
    env = {**os.environ, "IMAGEZOO_CACHE": str(tmp_path), "COLUMNS": "100"}
    probe = ("import sys\nsys.argv = ['imagezoo', '--help']\nfrom imagezoo.cli import run\n"
             "try:\n    run()\nexcept SystemExit as done:\n    assert done.code == 0\n"
             "sys.stderr.write('argparse' in sys.modules and 'ARGPARSE' or 'NONE')")
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=60)
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=60)
    assert first.stdout == second.stdout == rendered(100)
    assert "usage: imagezoo" in first.stdout and "classify" in first.stdout
    assert (first.stderr, second.stderr) == ("ARGPARSE", "NONE")
    assert len(list((tmp_path / ".help").iterdir())) == 1
    # Another width is another text.
    narrow = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**env, "COLUMNS": "60"}, cwd=ROOT, timeout=60)
    assert narrow.stdout == rendered(60) != first.stdout
    assert len(list((tmp_path / ".help").iterdir())) == 2


def test_a_changed_grammar_or_version_renders_afresh(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "90")
    expected = build_parser().format_help()
    assert help_text.print_top_level_help() == 0
    [kept] = (tmp_path / ".help").iterdir()
    kept.write_text("stale text of an older grammar\n")
    assert help_text.print_top_level_help() == 0
    capsys.readouterr()
    assert help_text.print_top_level_help() == 0
    assert capsys.readouterr().out == "stale text of an older grammar\n"   # same key: kept
    monkeypatch.setattr(help_text, "__version__", "9.9.9")
    assert help_text.print_top_level_help() == 0
    assert capsys.readouterr().out == expected
    # The grammar's files are part of the key: another size or time, another file.
    monkeypatch.setattr(help_text, "GRAMMAR_FILES", ("cli/parser.py", "choices.py", "lazy.py"))
    assert help_text.print_top_level_help() == 0
    assert capsys.readouterr().out == expected
    assert len(list((tmp_path / ".help").iterdir())) == 3


def test_an_empty_kept_file_or_an_unwritable_cache_still_prints_the_help(tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv("COLUMNS", "80")
    expected = build_parser().format_help()
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("IMAGEZOO_CACHE", str(blocked))
    assert help_text.print_top_level_help() == 0
    assert capsys.readouterr().out == expected
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    help_text.print_top_level_help()
    [kept] = (tmp_path / ".help").iterdir()
    kept.write_text("")
    capsys.readouterr()
    assert help_text.print_top_level_help() == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_the_command_prints_it(flag, tmp_path):
    done = subprocess.run([sys.executable, "-m", "imagezoo", flag], capture_output=True, text=True,
                          env={**os.environ, "IMAGEZOO_CACHE": str(tmp_path), "COLUMNS": "80"},
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout == rendered(80)


def test_a_kept_file_that_is_not_text_is_rendered_afresh(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGEZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "80")
    help_text.print_top_level_help()
    [kept] = (tmp_path / ".help").iterdir()
    kept.write_bytes(b"\xff\xfe not UTF-8 \xc3")
    capsys.readouterr()
    assert help_text.print_top_level_help() == 0
    assert capsys.readouterr().out == build_parser().format_help()
