"""Accuracy, per-class accuracy and the base/new harmonic-mean conventions."""

import pytest
import torch

from specpl.evaluate import accuracy_from_predictions, aggregate_base_new, base_new_table, harmonic_mean


def test_accuracy_and_per_class():
    result = accuracy_from_predictions(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), ["a", "b", "c"])
    assert result.accuracy == 75.0
    assert result.per_class == {"a": 100.0, "b": 100.0, "c": 50.0}


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_aggregate_is_hm_of_means_not_mean_of_hms():
    # published convention: CLIP's 11-dataset means 69.34 / 74.22 give HM 71.70
    assert aggregate_base_new([(69.34, 74.22)])["hm"] == pytest.approx(71.70, abs=0.01)
    pairs = [(90.0, 10.0), (50.0, 50.0)]
    summary = aggregate_base_new(pairs)
    assert (summary["base"], summary["new"]) == (70.0, 30.0)
    assert summary["hm"] == pytest.approx(42.0)
    assert summary["hm"] != pytest.approx(sum(harmonic_mean(b, n) for b, n in pairs) / 2)


def test_base_new_table_averages_seeds_then_datasets_by_hand():
    rows, average = base_new_table({"dtd": [(80.0, 50.0), (70.0, 60.0)], "eurosat": [(90.0, 70.0)]})
    assert rows["dtd"] == {"base": 75.0, "new": 55.0, "hm": pytest.approx(2 * 75 * 55 / 130)}  # HM of the seed means
    assert rows["eurosat"]["hm"] == pytest.approx(2 * 90 * 70 / 160)
    assert average == {"base": 82.5, "new": 62.5, "hm": pytest.approx(2 * 82.5 * 62.5 / 145)}


def test_aggregate_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        aggregate_base_new([])
