"""The image-level decision rule, worked by hand."""

import pytest

from covidet.detection.decision import assess, class_evidence
from covidet.domain import Label


def test_evidence_is_the_highest_score_per_class() -> None:
    evidence = class_evidence([1, 1, 2, 3], [0.4, 0.9, 0.3, 0.2])
    assert evidence.tolist() == pytest.approx([0.9, 0.3, 0.2])


def test_no_detections_is_normal_with_all_weight_on_normal() -> None:
    result = assess([], [])
    assert result.label is Label.NORMAL
    # weights (1e-6, 1e-6, 1 + 1e-6) / sum
    assert result.probabilities[Label.NORMAL] == pytest.approx(1.0, abs=3e-6)
    assert sum(result.probabilities.values()) == pytest.approx(1.0)


def test_disease_above_threshold_wins_and_probabilities_follow_the_rule() -> None:
    result = assess([1, 2], [0.8, 0.6], threshold=0.5)
    assert result.label is Label.COVID19
    # weights: covid 0.8, pneumonia 0.6, normal max(0, 1 - 0.8) = 0.2 -> sum 1.6
    assert result.probabilities[Label.COVID19] == pytest.approx(0.8 / 1.6, abs=1e-5)
    assert result.probabilities[Label.PNEUMONIA] == pytest.approx(0.6 / 1.6, abs=1e-5)
    assert result.probabilities[Label.NORMAL] == pytest.approx(0.2 / 1.6, abs=1e-5)


def test_pneumonia_when_its_evidence_is_higher() -> None:
    assert assess([1, 2], [0.55, 0.7]).label is Label.PNEUMONIA


def test_below_threshold_is_normal_even_without_normal_boxes() -> None:
    result = assess([1], [0.49], threshold=0.5)
    assert result.label is Label.NORMAL
    assert result.threshold == 0.5


def test_threshold_edge_is_inclusive_and_validated() -> None:
    assert assess([1], [0.5], threshold=0.5).label is Label.COVID19
    with pytest.raises(ValueError, match="threshold"):
        assess([1], [0.5], threshold=1.5)
