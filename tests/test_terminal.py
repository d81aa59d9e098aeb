"""What a user sees in the terminal: plain-text help with an example for every command, -q/-v, and
progress bars only on a terminal (the libraries' own bars and logs silenced through their controls)."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from helpers import make_tiny_segformer
from hub_server import HubServer, hub  # noqa: F401  (hub: fixture)
from huggingface_hub import HfApi
from test_eval import tiny_samples, write_paired_folder

from hf_lwmm.cli import COMMANDS, build_parser, main
from hf_lwmm.console import Verbosity, configure

LWMM_HUB = str(Path(sys.executable).with_name("lwmm-hub"))
RST = re.compile(r"``|:(class|func|mod|meth|attr|data|ref):`")


@pytest.fixture(autouse=True)
def default_verbosity():
    """Each in-process command run sets the process's verbosity; leave it at the default for the other tests."""
    yield
    configure(Verbosity.NORMAL)


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"lwmm-hub": parser, **action.choices}


@pytest.mark.parametrize("name", ["lwmm-hub", *COMMANDS])
def test_help_is_plain_text_with_an_example(name):
    text = command_parsers()[name].format_help()
    assert not RST.search(text), RST.search(text)
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("lwmm-hub ")]
    assert re.search(r"^examples?:$", text, re.M) and examples, text
    if name != "lwmm-hub":
        assert all(line.split()[1] == name for line in examples)
    assert "-q, --quiet" in text and "-v, --verbose" in text


def test_quiet_and_verbose_go_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["demo"]).verbosity is Verbosity.NORMAL
    assert parser.parse_args(["-q", "demo"]).verbosity is Verbosity.QUIET
    assert parser.parse_args(["demo", "--quiet"]).verbosity is Verbosity.QUIET
    assert parser.parse_args(["-v", "align", "a", "b"]).verbosity is Verbosity.VERBOSE
    assert parser.parse_args(["align", "a", "b", "-v"]).verbosity is Verbosity.VERBOSE
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "-q", "-v"])


def run(*argv: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([LWMM_HUB, *argv], capture_output=True, text=True, timeout=300, **options)


def test_only_the_program_freezes_its_imports_for_the_garbage_collector(tiny_models, tmp_path, monkeypatch):
    """``gc.freeze`` keeps objects out of collection for good: the program may, a caller of ``main([...])`` must not."""
    import gc

    freezes: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(len(freezes)))
    arguments = ["merge", *map(str, tiny_models), "--output", str(tmp_path / "called"), "-q"]
    assert main(arguments) == 0 and freezes == []
    monkeypatch.setattr(sys, "argv", ["lwmm-hub", *arguments[:-2], str(tmp_path / "program"), "-q"])
    assert main() == 0 and freezes == [0]


#: run in a fresh interpreter: the objects left in the two younger generations (which every collection passes over)
#: and the frozen ones, before and after ``import hf_lwmm``
IMPORT_PROBE = """
import gc
{before}
young = lambda: len(gc.get_objects(generation=0)) + len(gc.get_objects(generation=1))
print(gc.get_freeze_count())
import hf_lwmm
print(young(), gc.get_freeze_count())
"""


@pytest.mark.parametrize("caller_froze", [False, True])
def test_importing_puts_its_objects_in_the_oldest_generation_and_leaves_the_callers_frozen_ones(caller_froze):
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(before="gc.freeze()" if caller_froze else "")],
                          capture_output=True, text=True, timeout=120, check=True)
    frozen_before, young, frozen = map(int, done.stdout.split())
    if caller_froze:  # nothing of the import added to the caller's frozen objects, none of theirs thawed
        assert 0 < frozen <= frozen_before
    else:  # torch's and pydantic's ~270,000 objects are not where the collector's frequent passes go
        assert frozen == 0 and young < 10_000


def test_quiet_demo_prints_only_the_result_table(tmp_path):
    done = run("demo", "-q", "--methods", "isotropic", "-o", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["method", "merged", "anchor", "layers", "agree", "output", "/", "sha256"]
    assert set(lines[1]) == {"-"} and len(lines) == 3
    assert lines[2].split()[0] == "isotropic"
    assert lines[2].split()[1:4] == ["205", "3", "22"]  # merged / from the anchor / layers
    assert "\r" not in done.stdout


@pytest.fixture
def repo_without_a_recipe(hub: HubServer, monkeypatch) -> str:
    """A Hub repo with files, none of which reproduce asks for."""
    monkeypatch.setenv("HF_TOKEN", hub.token)
    api = HfApi()
    api.create_repo(f"{hub.user}/not-a-merge")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=f"{hub.user}/not-a-merge")
    return f"{hub.user}/not-a-merge"


def test_library_warnings_are_silenced_unless_verbose(repo_without_a_recipe):
    quiet = run("reproduce", repo_without_a_recipe, env=dict(os.environ))
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [f"lwmm-hub reproduce: error: {repo_without_a_recipe}: the repo has no lwmm_recipe.yaml "
                                         "(was it pushed by lwmm-hub?)"]
    verbose = run("reproduce", repo_without_a_recipe, "-v", env=dict(os.environ))
    assert verbose.returncode == 2
    lines = verbose.stderr.splitlines()
    assert any(line.startswith("No files matched allow_patterns=") for line in lines), lines  # huggingface_hub's warning
    assert lines[-1] == quiet.stderr.splitlines()[-1]


def terminal_pair() -> tuple[int, int]:
    """A pseudo-terminal of 100 columns (a fresh one has none, and a bar would be drawn empty)."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    return primary, secondary


def test_a_bar_shows_on_a_terminal_only(tmp_path):
    first, second = (make_tiny_segformer(tmp_path / name, seed=seed) for seed, name in enumerate("ab"))
    primary, secondary = terminal_pair()
    process = subprocess.Popen([LWMM_HUB, "diff", str(first), str(second)], stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    stdout = process.stdout.read().decode() if process.stdout else ""
    assert process.wait(timeout=60) == 0
    assert "comparing" in terminal.decode() and "\r" in terminal.decode()
    assert "comparing" not in stdout and "\r" not in stdout
    quiet_primary, quiet_secondary = terminal_pair()
    quiet = subprocess.run([LWMM_HUB, "diff", str(first), str(second), "-q"], stdout=subprocess.PIPE, stderr=quiet_secondary, timeout=60)
    os.close(quiet_secondary)
    os.set_blocking(quiet_primary, False)
    try:
        leftover = os.read(quiet_primary, 4096)
    except (BlockingIOError, OSError):
        leftover = b""
    os.close(quiet_primary)
    assert quiet.returncode == 0 and leftover == b""


def test_no_command_writes_carriage_returns_without_a_terminal(tmp_path, capfd):
    """Every command in-process on tiny models and data: fd-level capture sees the libraries' writes too."""
    models = [str(make_tiny_segformer(tmp_path / f"model_{i}", seed=i)) for i in range(2)]
    data = str(write_paired_folder(tmp_path / "data", tiny_samples(count=2)))
    merged = str(tmp_path / "merged")
    runs = [
        ["merge", *models, "-o", merged, "--eval-dataset", data],
        ["align", *models],
        ["diff", *models],
        ["eval", merged, models[0], "--dataset", data, "--ensemble"],
        ["compare", *models, "--dataset", data, "--output-dir", str(tmp_path / "compare")],
        ["sweep", *models, "--dataset", data, "--alphas", "0.5", "--start-layers", "0,9", "--output-dir", str(tmp_path / "sweep")],
        ["reproduce", merged],
    ]
    for argv in runs:
        assert main(argv) == 0, argv
        out, err = capfd.readouterr()
        assert "\r" not in out and "\r" not in err, argv
        assert err == "", (argv, err)
    assert main(["eval", merged, "--dataset", data, "--output-json", str(tmp_path / "eval.json"), "-q"]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines()[0].startswith("dataset ") and "results →" not in out and err == ""
    assert main(["eval", merged, "--dataset", data, "--output-json", str(tmp_path / "eval.json")]) == 0
    assert capfd.readouterr().out.splitlines()[-1] == f"results → {tmp_path / 'eval.json'}"


def hand_made_report(tmp_path):
    from hf_lwmm.evaluation.data import DataSource
    from hf_lwmm.evaluation.runner import EvaluationReport, RowResult

    folder = tmp_path / "dusk" / "val"
    folder.mkdir(parents=True)
    rows = [RowResult("fine", 1, 0.5, 0.6, 0.7, {"sky": 0.4, "road": 0.6, "pole": 0.5}),
            RowResult("coarse", 1, 0.55, 0.6, 0.7, {"sky": 0.5, "road": 0.6, "pole": None}),
            RowResult("merge", 1, 0.525, 0.6, 0.7, {"sky": 0.45, "road": 0.6, "pole": 0.525})]
    return EvaluationReport(DataSource(str(folder), split=None), ["sky", "road", "pole"], 6, rows)


def test_tables_explain_the_dash_and_compare_only_means_over_the_same_classes(tmp_path):
    from hf_lwmm.evaluation.report import (
        MISSING_NOTE,
        comparison_table,
        per_class_table,
    )

    report = hand_made_report(tmp_path)
    table = per_class_table(report).splitlines()
    assert table[0] == "dataset dusk/val, 6 images"
    assert next(line for line in table if line.startswith("pole")).split() == ["pole", "50.00", "—", "52.50"]
    assert table[-1] == MISSING_NOTE
    lines = comparison_table(report, anchor="fine").splitlines()
    assert [line.split()[:3] for line in lines[2:5]] == [["fine", "50.00", "—"], ["coarse", "55.00", "n/a"], ["merge", "52.50", "+2.50"]]
    assert lines[5] == "mIoU % on dusk/val, 6 images"
    assert lines[6].startswith("n/a: the row scores other classes than the anchor's 3")
    report.rows[1].per_class_iou["pole"] = 0.55
    assert MISSING_NOTE not in per_class_table(report)
    assert "n/a" not in comparison_table(report, anchor="fine")


def test_sweep_table_names_the_data_and_the_unit(tmp_path):
    from hf_lwmm.evaluation.sweep import SweepPoint, SweepResult, sweep_table

    report = hand_made_report(tmp_path)
    anchor, merged = report.rows[0], report.rows[2]
    result = SweepResult("fine", anchor, ["block.0.0", "block.1.0"], [0.5], [0, 1],
                         [SweepPoint(0.5, 0, "block.0.0", merged), SweepPoint(0.5, 1, "block.1.0", anchor)],
                         source=report.source, samples=report.samples)
    lines = sweep_table(result).splitlines()
    assert lines[0] == "mIoU % on dusk/val, 6 images of the layer-wise merge, by start layer (rows) and α (columns)"
    assert lines[3].split() == ["0", "block.0.0", "52.50*"] and lines[4].split() == ["1", "block.1.0", "50.00"]


def test_align_reports_what_models_of_different_depths_share(tmp_path, capsys):
    shallow, deep = make_tiny_segformer(tmp_path / "shallow"), make_tiny_segformer(tmp_path / "deep", depths=[1, 2, 1, 1])
    assert main(["align", str(shallow), str(deep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "tensors: 124 shared, 0 shape-mismatch, 22 not-in-every-model"
    assert lines[2] == "encoder depths differ (blocks per stage): [0] [1, 1, 1, 1], [1] [1, 2, 1, 1]"
    assert lines[3] == "shared by all: stage 0: block 0 of 1; stage 1: block 0 of 2; stage 2: block 0 of 1; stage 3: block 0 of 1"
    by_layer = {line.split()[0]: line.split(None, 1)[1] for line in lines[5:]}
    assert by_layer["block.1.0"] == "22 shared" and by_layer["block.1.1"] == "22 tensors only in [1]"
    assert main(["merge", str(shallow), str(deep), "-o", str(tmp_path / "merged")]) == 2  # the merge still refuses
    assert "encoder depths [1, 2, 1, 1]" in capsys.readouterr().err


def test_reproduce_names_the_source_that_changed(tmp_path, capsys):
    from hf_lwmm.io import sha256_of

    models = [make_tiny_segformer(tmp_path / f"m{i}", seed=i) for i in range(2)]
    output = tmp_path / "merged"
    assert main(["merge", *map(str, models), "-o", str(output)]) == 0
    recorded = sha256_of(models[1] / "model.safetensors")
    make_tiny_segformer(models[1], seed=7)  # the source changes under the recorded recipe
    current = sha256_of(models[1] / "model.safetensors")
    capsys.readouterr()
    assert main(["reproduce", str(output)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"  {models[0]}  (local folder: no commit to pin, used as it is now; weights unchanged)"
    assert lines[2] == f"  {models[1]}  (local folder: no commit to pin, used as it is now; CHANGED since the merge)"
    assert lines[3] == f"    model.safetensors: recorded {recorded[:16]}, now {current[:16]}"
    assert lines[-1] == f"MISMATCH: the weights differ from the published ones ({models[1]} changed since the merge)"


def test_verbosity_goes_through_the_libraries_own_switches_and_back():
    import logging
    import warnings

    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    configure(Verbosity.NORMAL)
    assert transformers_logging.get_verbosity() == logging.ERROR and hub_logging.get_verbosity() == logging.ERROR
    assert datasets.utils.logging.get_verbosity() == logging.ERROR and logging.getLogger("accelerate").level == logging.ERROR
    assert are_progress_bars_disabled() and not transformers_logging.is_progress_bar_enabled()
    assert datasets.utils.are_progress_bars_disabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("from a library", UserWarning, "x.py", 1, module="transformers.models.x")
    assert caught == []
    configure(Verbosity.VERBOSE)
    assert transformers_logging.get_verbosity() == logging.WARNING and hub_logging.get_verbosity() == logging.WARNING
    assert not are_progress_bars_disabled() and transformers_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("from a library", UserWarning, "x.py", 2, module="transformers.models.x")
    assert [str(w.message) for w in caught] == ["from a library"]
