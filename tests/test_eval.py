"""``lwmm-hub eval``: numbers equal a hand-run of the model on tiny datasets in the three data forms."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from helpers import make_tiny_segformer
from hf_lwmm.cli import main
from hf_lwmm.evaluation.data import load_segmentation_data
from metric_reference import per_image_mean_iou
from hf_lwmm.errors import LwmmError
from hf_lwmm.evaluation.data import Sample
from hf_lwmm.evaluation.runner import Predictor, dataset_label, evaluate_predictors

NUM_LABELS = 5
VOID = 255
SIZE = (18, 26)  # label height, width


def tiny_samples(seed: int = 0, count: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """RGB images with uint8 labels in 0…4 plus a void stripe."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        label = rng.integers(0, NUM_LABELS, SIZE).astype(np.uint8)
        label[:2] = VOID
        samples.append((image, label))
    return samples


def class_names(count: int = NUM_LABELS) -> list[str]:
    return [f"class_{i}" for i in range(count)]


def write_paired_folder(folder: Path, samples, *, names: list[str] | None = None, ignore_index: int = VOID) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index, (image, label) in enumerate(samples):
        Image.fromarray(image).save(folder / "images" / f"frame_{index:03d}.png")
        Image.fromarray(label).save(folder / "labels" / f"frame_{index:03d}.png")
    document = {"id2label": {str(i): name for i, name in enumerate(names or class_names())}, "ignore_index": ignore_index}
    (folder / "classes.json").write_text(json.dumps(document))
    return folder


def write_parquet_folder(folder: Path, samples, *, split: str = "validation", columns=("image", "label")) -> Path:
    (folder / "data").mkdir(parents=True)
    table = {columns[0]: [Image.fromarray(image) for image, _ in samples], columns[1]: [Image.fromarray(label) for _, label in samples]}
    features = datasets.Features({column: datasets.Image() for column in columns})
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def write_imagefolder(folder: Path, samples) -> Path:
    write_paired_folder(folder, samples)
    lines = [json.dumps({"file_name": f"images/frame_{i:03d}.png", "label_file_name": f"labels/frame_{i:03d}.png"}) for i in range(len(samples))]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def probabilities_by_hand(folder: Path, image: np.ndarray) -> torch.Tensor:
    """Processor → logits → bilinear resize to the image (= label) size → softmax (what eval must do)."""
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**processor(images=[Image.fromarray(image)], return_tensors="pt")).logits
    return F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0].softmax(dim=0)


def expected_result(folders: list[Path], samples, *, label_map: dict[int, int] | None = None, num_labels: int = NUM_LABELS,
                    prediction_map: np.ndarray | None = None) -> dict:
    predictions = []
    for image, _ in samples:
        predicted = torch.stack([probabilities_by_hand(folder, image) for folder in folders]).mean(dim=0).argmax(dim=0).numpy()
        predictions.append(prediction_map[predicted] if prediction_map is not None else predicted)
    return per_image_mean_iou(predictions, [label for _, label in samples], num_labels=num_labels, ignore_index=VOID, label_map=label_map)


def single_model_miou(folder, data) -> float:
    """mean IoU of one model folder on a dataset, through the evaluation API."""
    report = evaluate_predictors([("m", folder)], [Predictor("m", (0,))], load_segmentation_data(str(data)), progress=False)
    return report.rows[0].mean_iou


def run_eval(*argv: str, output: Path) -> dict:
    assert main(["eval", *argv, "--output-json", str(output), "--batch-size", "2"]) == 0
    return json.loads(output.read_text())


@pytest.mark.parametrize("form", ["paired folder", "parquet", "imagefolder"])
def test_eval_numbers_equal_a_hand_run_in_every_data_form(tmp_path, form):
    model = make_tiny_segformer(tmp_path / "model", num_labels=NUM_LABELS)
    samples = tiny_samples()
    writer = {"paired folder": write_paired_folder, "parquet": write_parquet_folder, "imagefolder": write_imagefolder}[form]
    data = writer(tmp_path / "data", samples)
    result = run_eval(str(model), "--dataset", str(data), output=tmp_path / "result.json")
    expected = expected_result([model], samples)
    (row,) = result["rows"]
    assert row["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert row["overall_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-12)
    assert [row["per_class_iou"][name] for name in class_names()] == pytest.approx(list(expected["per_category_iou"]), abs=1e-12)
    assert result["samples"] == len(samples) and row["relative_cost"] == 1


def test_ensemble_equals_manual_softmax_averaging(tmp_path, capsys):
    models = [make_tiny_segformer(tmp_path / f"model_{i}", num_labels=NUM_LABELS, seed=i) for i in range(2)]
    samples = tiny_samples(seed=1)
    data = write_paired_folder(tmp_path / "data", samples)
    result = run_eval(*map(str, models), "--dataset", str(data), "--ensemble", output=tmp_path / "result.json")
    single, _, ensemble = result["rows"]
    assert (single["relative_cost"], ensemble["relative_cost"]) == (1, 2)
    assert ensemble["mean_iou"] == pytest.approx(expected_result(models, samples)["mean_iou"], abs=1e-12)
    assert single["mean_iou"] == pytest.approx(expected_result(models[:1], samples)["mean_iou"], abs=1e-12)
    table = capsys.readouterr().out
    assert "ensemble of 2" in table and "inference cost" in table and "class_4" in table


def test_models_with_other_classes_are_evaluated_over_the_shared_ones(tmp_path):
    """Dataset names its classes in another order and has one class (``extra``) the model lacks."""
    model = make_tiny_segformer(tmp_path / "model", num_labels=NUM_LABELS)
    samples = tiny_samples(seed=2)
    for _, label in samples:
        label[-3:] = 5  # pixels of the class the model does not know
    dataset_names = ["Class 4", "class-3", "class_2", "CLASS_1", "class_0", "extra"]  # dataset id d = model class 4 - d
    data = write_paired_folder(tmp_path / "data", samples, names=dataset_names)
    result = run_eval(str(model), "--dataset", str(data), output=tmp_path / "result.json")
    to_dataset = np.array([4, 3, 2, 1, 0])
    expected = expected_result([model], samples, num_labels=6, prediction_map=to_dataset, label_map={5: VOID})
    (row,) = result["rows"]
    assert row["per_class_iou"]["extra"] is None
    assert row["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)


def test_label_map_file_routes_classes_and_drops_unmapped_ones(tmp_path):
    model = make_tiny_segformer(tmp_path / "model", num_labels=NUM_LABELS)
    samples = tiny_samples(seed=3)
    data = write_paired_folder(tmp_path / "data", samples, names=["sky", "road", "car", "tree", "person"])
    mapping = {"class_0": "sky", "class_1": "road", "class_2": "car", "class_3": "tree", "class_4": None}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    result = run_eval(str(model), "--dataset", str(data), "--label-map", str(tmp_path / "map.json"), output=tmp_path / "result.json")
    # model class 4 predicts no dataset class (value 5 is outside 0…4): its pixels are wrong; "person" is not evaluated
    expected = expected_result([model], samples, prediction_map=np.array([0, 1, 2, 3, 5]), label_map={4: VOID})
    (row,) = result["rows"]
    assert row["per_class_iou"]["person"] is None
    assert row["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_images_of_different_sizes_share_a_batch(tmp_path, workers):
    model = make_tiny_segformer(tmp_path / "model", num_labels=NUM_LABELS)
    samples = tiny_samples(seed=4, count=3)
    samples[1] = (samples[1][0][:11, :15], samples[1][1][:11, :15])
    data = write_paired_folder(tmp_path / "data", samples)
    result = run_eval(str(model), "--dataset", str(data), "--num-workers", workers, output=tmp_path / "result.json")
    assert result["rows"][0]["mean_iou"] == pytest.approx(expected_result([model], samples)["mean_iou"], abs=1e-12)


def test_evaluate_predictors_api_reports_rows_by_name(tmp_path):
    model = make_tiny_segformer(tmp_path / "model", num_labels=NUM_LABELS)
    data = load_segmentation_data(str(write_paired_folder(tmp_path / "data", tiny_samples())), max_samples=3)
    report = evaluate_predictors([("tiny", model)], [Predictor("tiny", (0,))], data, progress=False)
    assert report.samples == 3 and report.row("tiny").relative_cost == 1
    assert report.source.id == str(tmp_path / "data")


def error_line(capsys, *argv: str) -> str:
    """The CLI's error: exit 2 and one line, the last on stderr (progress bars may precede it)."""
    capsys.readouterr()
    assert main(["eval", *argv]) == 2
    last = capsys.readouterr().err.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("lwmm-hub eval: error: ")
    return last


def test_missing_column_is_one_line(tmp_path, capsys):
    model = make_tiny_segformer(tmp_path / "model")
    data = write_parquet_folder(tmp_path / "data", tiny_samples(count=2), columns=("image", "mask_png"))
    assert "no label column among image, mask_png" in error_line(capsys, str(model), "--dataset", str(data))
    assert "--label-column seg: not a column" in error_line(capsys, str(model), "--dataset", str(data), "--label-column", "seg")


def test_label_ids_out_of_range_are_one_line(tmp_path, capsys):
    model = make_tiny_segformer(tmp_path / "model")
    samples = tiny_samples(count=2)
    samples[1][1][5, 5] = 9
    data = write_paired_folder(tmp_path / "data", samples)
    message = error_line(capsys, str(model), "--dataset", str(data))
    assert "frame_001.png: label value 9 is neither a class id 0–4 nor the ignore index 255" in message


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint16])
def test_dataset_label_maps_void_and_rejects_other_values(dtype):
    raw = np.array([[0, 4, 255], [3, 255, 1]], dtype=dtype)
    label = dataset_label(Sample(None, raw, "x.png"), num_classes=5, ignore_index=255)
    assert label.dtype == np.int16
    np.testing.assert_array_equal(label, [[0, 4, -1], [3, -1, 1]])
    raw[1, 2] = 7
    with pytest.raises(LwmmError, match="x.png: label value 7 is neither"):
        dataset_label(Sample(None, raw, "x.png"), num_classes=5, ignore_index=255)
    no_void = dataset_label(Sample(None, np.array([[0, 1]], dtype=dtype), "y.png"), num_classes=2, ignore_index=-1)
    np.testing.assert_array_equal(no_void, [[0, 1]])


def test_negative_worker_count_is_one_line(tmp_path, capsys):
    model = make_tiny_segformer(tmp_path / "model")
    data = write_paired_folder(tmp_path / "data", tiny_samples(count=2))
    assert "--num-workers -1: must be 0" in error_line(capsys, str(model), "--dataset", str(data), "--num-workers", "-1")


def test_split_that_does_not_exist_is_one_line(tmp_path, capsys):
    model = make_tiny_segformer(tmp_path / "model")
    table = write_parquet_folder(tmp_path / "table", tiny_samples(count=2))
    assert "--split train: dataset" in error_line(capsys, str(model), "--dataset", str(table), "--split", "train")
    folder = write_paired_folder(tmp_path / "folder", tiny_samples(count=2))
    assert "--split test: no folder" in error_line(capsys, str(model), "--dataset", str(folder), "--split", "test")


def test_image_and_label_of_different_sizes_are_one_line(tmp_path, capsys):
    model = make_tiny_segformer(tmp_path / "model")
    samples = tiny_samples(count=2)
    samples[0] = (samples[0][0][:, :20], samples[0][1])
    data = write_paired_folder(tmp_path / "data", samples)
    assert "frame_000.png: image is 20×18 but its label is 26×18" in error_line(capsys, str(model), "--dataset", str(data))


def test_output_json_into_a_missing_folder_creates_it(tmp_path):
    model = make_tiny_segformer(tmp_path / "model")
    data = write_paired_folder(tmp_path / "data", tiny_samples(count=2))
    result = run_eval(str(model), "--dataset", str(data), output=tmp_path / "new" / "folder" / "result.json")
    assert result["samples"] == 2 and result["rows"][0]["mean_iou"] == pytest.approx(single_model_miou(model, data), abs=1e-12)


def test_pickle_weights_are_evaluated_only_with_allow_pickle(tmp_path, capsys):
    from safetensors.torch import load_file

    model = make_tiny_segformer(tmp_path / "model")
    data = write_paired_folder(tmp_path / "data", tiny_samples(count=2))
    expected = run_eval(str(model), "--dataset", str(data), output=tmp_path / "safetensors.json")["rows"][0]["mean_iou"]
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    assert "--allow-pickle" in error_line(capsys, str(model), "--dataset", str(data))
    allowed = run_eval(str(model), "--dataset", str(data), "--allow-pickle", output=tmp_path / "pickle.json")
    assert allowed["rows"][0]["mean_iou"] == expected
