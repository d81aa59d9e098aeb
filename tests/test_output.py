"""Outputs never lose data: umask permissions, signals mid-merge, stale staging folders, the final rename."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import make_tiny_segformer
from hf_lwmm.cli import main
from hf_lwmm.errors import LwmmError
from hf_lwmm.hub import sha256_of
from hf_lwmm.io.output import staged_folder

#: runs the real CLI, but the merge stops after writing its first tensor (says so on stdout) until signalled;
#: SIGHUP and SIGINT get their actions of a terminal first: a suite run under nohup hands SIGHUP down ignored, one run
#: in the background of a script SIGINT (Python then raises no KeyboardInterrupt), and a merge keeps ignored signals
#: ignored (a nohup'd merge survives the hangup)
BLOCKED_MERGE = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from hf_lwmm.io import writer
    write = writer.ShardedSafetensorsWriter.write
    def blocked(self, names, data):
        write(self, names, data)
        print("writing", flush=True)
        time.sleep(120)
    writer.ShardedSafetensorsWriter.write = blocked
    from hf_lwmm.cli import main
    sys.exit(main(sys.argv[1:]))
""")

#: the subprocesses share the cores with the test run: one thread each
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def models(tmp_path):
    return [make_tiny_segformer(tmp_path / "inputs" / f"m{i}", seed=i) for i in range(2)]


def test_outputs_get_the_permissions_of_the_umask(models, tmp_path):
    previous = os.umask(0o027)
    try:
        assert main(["merge", *map(str, models), "--output", str(tmp_path / "out" / "merged")]) == 0
    finally:
        os.umask(previous)
    merged = tmp_path / "out" / "merged"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750  # a parent made for it too
    assert merged.stat().st_mode & 0o777 == 0o750
    assert {path.name: path.stat().st_mode & 0o777 for path in merged.iterdir()} == dict.fromkeys(
        ["README.md", "config.json", "lwmm_recipe.yaml", "lwmm_weights.png", "model.safetensors", "preprocessor_config.json"], 0o640)


def test_signals_mid_merge_leave_nothing_and_a_killed_run_is_cleaned_up_by_the_next(models, tmp_path):
    parent = tmp_path / "outputs"
    parent.mkdir()
    signals = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGHUP": signal.SIGHUP, "SIGKILL": signal.SIGKILL}
    runs = {name: subprocess.Popen([sys.executable, "-c", BLOCKED_MERGE, "merge", *map(str, models), "--output", str(parent / name)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD) for name in signals}
    for name, run in runs.items():  # all four start together: the interpreters load in parallel
        assert run.stdout.readline() == "writing\n", run.communicate()[1]
        assert any(parent.iterdir())  # the staging folder exists now
        run.send_signal(signals[name])
    codes = {name: run.wait(timeout=60) for name, run in runs.items()}
    assert codes == {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 130, "SIGHUP": 128 + signal.SIGHUP, "SIGKILL": -signal.SIGKILL}
    (stale,) = parent.iterdir()  # only SIGKILL, which no process can handle, left its staging folder
    assert stale.name.startswith(".SIGKILL.") and stale.name.endswith(".lwmm-tmp")

    assert main(["merge", *map(str, models), "--output", str(parent / "SIGKILL")]) == 0
    assert [path.name for path in parent.iterdir()] == ["SIGKILL"]  # the next run to that output removed it


def test_final_rename_refuses_an_output_that_appeared_meanwhile(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(LwmmError, match="appeared while this run was writing it"):
        with staged_folder(output) as staging:
            (staging / "weights").write_text("second run")
            output.mkdir()  # a concurrent run finished first
            (output / "weights").write_text("first run")
    assert (output / "weights").read_text() == "first run"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # the loser's staging folder is gone

    with pytest.raises(LwmmError, match="appeared while this run was writing it"):
        with staged_folder(output, overwrite=True) as staging:  # --overwrite replaces what existed at the start...
            (staging / "weights").write_text("third run")
            os.rename(output, tmp_path / "moved")
            output.mkdir()  # ...not an output that appeared since (here: replaced by another run)
            (output / "weights").write_text("fourth run")
    assert (output / "weights").read_text() == "fourth run"

    with staged_folder(output, overwrite=True) as staging:
        (staging / "weights").write_text("fifth run")
    assert (output / "weights").read_text() == "fifth run"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["moved", "out"]


def test_two_merges_to_one_new_output_the_second_fails_and_the_first_stays(models, tmp_path, capfd):
    """The second merge starts while the output is new and finishes after the first wrote it."""
    output = tmp_path / "merged"
    second = subprocess.Popen([sys.executable, "-c", BLOCKED_MERGE.replace("time.sleep(120)", "sys.stdin.readline()"),
                               "merge", *map(str, models), "--method", "isotropic", "--output", str(output)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    assert second.stdout.readline() == "writing\n"
    assert main(["merge", *map(str, models), "--output", str(output)]) == 0  # the first finishes meanwhile
    first = sha256_of(output / "model.safetensors")
    _, err = second.communicate("go\n", timeout=60)
    assert second.returncode == 2
    assert err.strip().splitlines()[-1].startswith(f"lwmm-hub merge: error: output {output}: appeared while this run was writing it")
    assert sha256_of(output / "model.safetensors") == first
    assert [path.name for path in tmp_path.iterdir() if path.name != "inputs"] == ["merged"]


def test_the_library_refuses_an_output_overlapping_an_input_before_planning(models, tmp_path, monkeypatch):
    from hf_lwmm import MergeRecipe, RunOptions, execute, merge, plan_merge

    recipe, options = MergeRecipe(models=models), RunOptions(progress=False, overwrite=True)
    planned = []
    monkeypatch.setattr(sys.modules["hf_lwmm.merge"], "plan_merge", lambda *args: planned.append(args))
    with pytest.raises(LwmmError, match=r"^output_dir .*m0/merged: lies inside the input .*m0; choose"):
        merge(recipe, models[0] / "merged", options)
    with pytest.raises(LwmmError, match=r"^output_dir .*inputs: contains the input .*m0; choose"):
        merge(recipe, models[0].parent, options)
    assert planned == []  # refused before any model was resolved
    plan = plan_merge(recipe, options)  # execute checks a plan's model folders too
    before = {path.name: sha256_of(path) for path in models[1].iterdir()}
    with pytest.raises(LwmmError, match=r"^output_dir .*m1: is the input .*m1; choose"):
        execute(plan, models[1], options)
    assert {path.name: sha256_of(path) for path in models[1].iterdir()} == before
