"""``merge --eval-dataset``: evaluate the merged model and record the result in its card's model-index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_lwmm.evaluation.data import DataSource, SegmentationData
from hf_lwmm.evaluation.runner import EvaluationReport, Predictor, RowResult, evaluate_predictors

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

    from hf_lwmm.result import MergeResult


def dataset_id(source: DataSource) -> str:
    """A Hub id as is; a local folder by its last two path parts (a card never shows local paths)."""
    path = Path(source.id)
    return "/".join(path.parts[-2:]) if path.is_dir() else source.id


def eval_result(source: DataSource, row: RowResult) -> EvalResult:
    from huggingface_hub import EvalResult

    name = dataset_id(source)
    return EvalResult(task_type="image-segmentation", task_name="Semantic Segmentation", dataset_type=name, dataset_name=name,
                      dataset_split=source.split, dataset_revision=source.revision, metric_type="mean_iou",
                      metric_name="mean IoU", metric_value=row.mean_iou)


def record_evaluation(result: MergeResult, data: SegmentationData, **options: Any) -> EvaluationReport:
    """Evaluate ``result.output_dir`` on ``data``, add the eval result to ``result`` and rewrite its card."""
    from hf_lwmm.card import write_card_files

    name = result.output_dir.name
    report = evaluate_predictors([(name, result.output_dir)], [Predictor(name, (0,))], data, **options)
    result.eval_results.append(eval_result(report.source, report.rows[0]))
    write_card_files(result, result.output_dir)
    return report
