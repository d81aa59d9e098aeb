"""``merge --eval-dataset``: evaluate each source alone, the merge and (optionally) the sources' output ensemble,
and record the results in the merge's card (its results table, and the merge's mean IoU in ``model-index``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_lwmm.evaluation.data import SegmentationData
from hf_lwmm.evaluation.runner import EvaluationReport, Predictor, evaluate_predictors

if TYPE_CHECKING:
    from hf_lwmm.result import CardEvaluation, MergeResult


def _card_evaluation(result: MergeResult, report: EvaluationReport, roles: list[str]) -> CardEvaluation:
    """The card's view of a report whose rows have the given roles."""
    from hf_lwmm.card import display_labels
    from hf_lwmm.result import CardEvaluation, EvaluatedRow

    names = [*display_labels(result), result.title]
    rows = [EvaluatedRow(names[index] if role != "ensemble" else row.name, role, row.mean_iou, row.relative_cost)
            for index, (row, role) in enumerate(zip(report.rows, roles))]
    source = report.source
    return CardEvaluation(source.name, source.local, source.split, source.revision, report.samples, rows)


def record_evaluation(result: MergeResult, data: SegmentationData, *, ensemble: bool = False, **options: Any) -> EvaluationReport:
    """Evaluate the sources, ``result.output_dir`` (and their ensemble) in one pass; record it in ``result`` and its card."""
    from hf_lwmm.card import write_card_files

    labels = [str(model.ref) for model in result.models]
    models = [*zip(labels, (model.folder for model in result.models)), (result.title, result.output_dir)]
    predictors = [Predictor(label, (index,)) for index, label in enumerate(labels)]
    predictors.append(Predictor(result.title, (len(labels),)))
    roles = ["anchor" if index == result.anchor else "source" for index in range(len(labels))] + ["merge"]
    if ensemble:
        predictors.append(Predictor(f"ensemble of {len(labels)}", tuple(range(len(labels)))))
        roles.append("ensemble")
    report = evaluate_predictors(models, predictors, data, **options)
    result.evaluation = _card_evaluation(result, report, roles)
    write_card_files(result, result.output_dir)
    return report
