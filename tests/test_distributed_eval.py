"""``lwmm-hub eval`` in two CPU processes (``accelerate launch``) gives the numbers of one process.

``accelerate launch --cpu --num_processes 2`` starts a single process (accelerate's plain launcher);
two CPU processes come from its torchrun launcher with the CPU forced (``ACCELERATE_USE_CPU``), over gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_tiny_segformer
from hf_lwmm.cli import main


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="no gloo backend")
def test_two_cpu_processes_give_the_numbers_of_one(tmp_path):
    model = make_tiny_segformer(tmp_path / "model", seed=3)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(1)
    for index, (height, width) in enumerate([(16, 20), (12, 12), (16, 20), (20, 14), (16, 20)]):  # 5: the last batch is padded
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(data / "images" / f"f{index}.png")
        label = rng.integers(0, 5, (height, width), dtype=np.uint8)
        label[0] = 255
        Image.fromarray(label).save(data / "labels" / f"f{index}.png")
    arguments = ["eval", str(model), str(model), "--ensemble", "--dataset", str(data), "--batch-size", "2"]
    assert main([*arguments, "--output-json", str(tmp_path / "one.json")]) == 0

    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "hf_lwmm.cli"]
    run = subprocess.run([*launch, *arguments, "--output-json", str(tmp_path / "two.json")], env=environment,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("mean IoU") == 1  # the main process reports, once
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["samples"] == one["samples"] == 5
    assert two["rows"] == one["rows"]  # every figure of every row, exactly
    assert 0 < one["rows"][0]["mean_iou"] < 1
