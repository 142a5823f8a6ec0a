"""``python -m slime_entropy.slime``: the command line, end to end on each slime release (see conftest.py)."""

from __future__ import annotations

import ast
import os
import sys

import pytest

from slime_entropy.slime.__main__ import main
from tests.slime_trees import SLIME_RELEASES, slime_tree


def test_the_script_runs_as_python_would_run_it(launch_run):
    report = launch_run.report
    assert report["wrapped"], "train.py got slime's parse_args, not the launcher's"
    assert report["argv0"] == "train.py"
    # The script's folder is on sys.path (slime is found there or on PYTHONPATH; Ray ships it to its workers).
    assert os.path.realpath(launch_run.work) in report["sys_path"]


def test_a_refused_flag_stops_the_launcher_with_status_2(launch_run):
    assert launch_run.returncode == 2, launch_run.stderr[-3000:]
    last_line = launch_run.stderr.strip().splitlines()[-1]
    assert (
        last_line == "  --entropy-percentil: did you mean --entropy-percentile? (abbreviations are not accepted: "
        "slime's parser takes full names)"
    )
    assert "python -m slime_entropy.slime: error: unknown flags where slime_entropy's live" in launch_run.stderr
    assert "Traceback" not in launch_run.stderr


@pytest.mark.parametrize("release", SLIME_RELEASES)
@pytest.mark.parametrize("script", ["train.py", "train_async.py"])
def test_slimes_scripts_take_parse_args_from_where_the_launcher_wraps_it(release, script):
    """The launcher wraps slime.utils.arguments.parse_args before the script runs; slime's scripts import it from
    there at module level and call it under __main__ with no arguments of their own."""
    tree = ast.parse((slime_tree(release) / script).read_text())
    imports = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and node.module == "slime.utils.arguments"
        and any(alias.name == "parse_args" and alias.asname is None for alias in node.names)
    ]
    assert imports, f"{release}/{script} no longer imports parse_args from slime.utils.arguments"
    main_block = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    calls = [
        node
        for block in main_block
        for node in ast.walk(block)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "parse_args"
    ]
    assert len(calls) == 1 and not calls[0].args and not calls[0].keywords


@pytest.fixture
def isolated(monkeypatch):
    """main() sets sys.argv and sys.path[0] as `python SCRIPT` would; keep the test process's own."""
    monkeypatch.setattr(sys, "argv", ["/somewhere/slime_entropy/slime/__main__.py"])
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_usage(isolated, capsys, monkeypatch):
    assert main(["--help"]) == 0
    assert "usage: python -m slime_entropy.slime SCRIPT" in capsys.readouterr().out
    assert main([]) == 2
    monkeypatch.setattr(sys, "argv", ["/venv/bin/slime-entropy-slime"])  # the console script
    assert main(["--help"]) == 0
    assert "usage: slime-entropy-slime SCRIPT" in capsys.readouterr().out


def test_the_first_argument_must_be_a_script(isolated, capsys):
    assert main(["--high-entropy-token-filter", "train.py"]) == 2
    assert "the first argument is the script to run" in capsys.readouterr().err
    assert main(["no_such_train.py"]) == 2
    assert "script no_such_train.py not found" in capsys.readouterr().err


def test_slime_not_importable_is_explained(isolated, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "slime", None)  # as on a machine without slime
    script = tmp_path / "train.py"
    script.write_text("raise AssertionError('must not run')\n")
    assert main([str(script), "--high-entropy-token-filter"]) == 2
    error = capsys.readouterr().err
    assert f"slime is not importable from {os.path.realpath(tmp_path)} or PYTHONPATH" in error
    assert "cd /path/to/slime" in error
