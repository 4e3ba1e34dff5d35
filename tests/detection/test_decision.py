"""The image-level decision rule, worked by hand."""

import numpy as np
import pytest

from covidet.detection.decision import assess, class_evidence, combined_evidence, image_weight_of, rule_name
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


def test_temperature_scales_probabilities_but_never_the_label() -> None:
    plain = assess([1, 2], [0.8, 0.6])
    sharp = assess([1, 2], [0.8, 0.6], temperature=0.5)
    assert sharp.label is plain.label is Label.COVID19
    # T = 0.5 squares the weights: 0.64, 0.36, 0.04 over 1.04
    assert sharp.probabilities[Label.COVID19] == pytest.approx(0.64 / 1.04, abs=1e-5)
    assert sharp.probabilities[Label.NORMAL] == pytest.approx(0.04 / 1.04, abs=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        assess([1], [0.5], temperature=0)


def test_threshold_is_the_largest_that_reaches_the_covid_sensitivity() -> None:
    import numpy as np

    from covidet.detection.decision import choose_threshold

    # Four covid images with covid evidence 0.9, 0.7, 0.4, 0.2; two normals with weak covid boxes.
    evidence = np.array(
        [[0.9, 0, 0], [0.7, 0, 0], [0.4, 0, 0], [0.2, 0, 0], [0.3, 0, 0.8], [0.1, 0, 0.9]], np.float64
    )
    truth = np.array([0, 0, 0, 0, 2, 2])
    assert choose_threshold(evidence, truth, target_covid_sensitivity=0.5) == (0.7, 0.5)
    assert choose_threshold(evidence, truth, target_covid_sensitivity=0.75) == (0.4, 0.75)
    assert choose_threshold(evidence, truth, target_covid_sensitivity=1.0) == (0.2, 1.0)
    # A covid image with no covid evidence at all cannot be reached: the best achievable is returned.
    evidence[3] = [0, 0, 0.5]
    threshold, achieved = choose_threshold(evidence, truth, target_covid_sensitivity=1.0)
    assert achieved == 0.75 and threshold == 0.4


def test_fitted_temperature_lowers_the_nll_of_overconfident_evidence() -> None:
    import numpy as np

    from covidet.detection.decision import decision_weights, fit_temperature, scaled_probabilities

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    # Confident evidence that is right only 60% of the time: calibration must soften it (T > 1).
    predicted = np.where(rng.random(300) < 0.6, truth, (truth + 1) % 3)
    evidence = np.full((300, 3), 0.02)
    evidence[np.arange(300), predicted] = 0.98
    temperature = fit_temperature(evidence, truth)
    assert temperature > 1.5

    def nll(t: float) -> float:
        p = scaled_probabilities(decision_weights(evidence), t)
        return float(-np.log(p[np.arange(300), truth]).mean())

    assert nll(temperature) < nll(1.0) and nll(temperature) <= nll(temperature * 1.1)
    assert nll(temperature) <= nll(temperature / 1.1)


def test_version_two_mixes_the_image_head_into_the_evidence() -> None:
    boxes = class_evidence([1], [0.6])  # a covid19 box at 0.6, nothing else
    image = np.array([0.1, 0.1, 0.8])  # the image head says normal
    np.testing.assert_allclose(combined_evidence([1], [0.6], image, 0.5), 0.5 * boxes + 0.5 * image)
    assert assess([1], [0.6]).label is Label.COVID19  # version 1: the box alone
    mixed = assess([1], [0.6], image_probs=image, image_weight=0.5)
    assert mixed.label is Label.NORMAL  # disease evidence 0.35 < 0.5
    # weight 0 or no image head: version 1 exactly
    assert assess([1], [0.6], image_probs=image, image_weight=0.0) == assess([1], [0.6])
    np.testing.assert_array_equal(combined_evidence([1], [0.6], None, 0.5), boxes)
    # the image head can also raise a disease the boxes missed
    assert assess([], [], image_probs=[0.05, 0.9, 0.05], image_weight=0.6).label is Label.PNEUMONIA
    with pytest.raises(ValueError, match="image_weight"):
        combined_evidence([1], [0.6], image, 1.5)
    assert rule_name(0.0) == "max-score-v1" and rule_name(0.5) == "max-score-v2"
    assert image_weight_of({"decision": {"threshold": 0.5}}) == 0.0
