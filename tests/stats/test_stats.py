"""Sec. 6.1 recomputed from the release against the values printed in the paper."""

from __future__ import annotations

import pytest

from fergi import FergiError
from fergi.datasets import AU_NAMES, EMOTIONS
from fergi.stats import reaction_statistics, significant_aus

# (AU, rho, p upper bound) printed in Sec. 6.1.
PAPER_RATING = {"AU2": (0.09, 5e-5), "AU4": (-0.18, 5e-17), "AU9": (-0.09, 5e-5), "AU12": (0.08, 5e-4)}
PAPER_EXTREMITY = {
    "AU1": (0.10, 5e-6), "AU2": (0.11, 5e-7), "AU5": (0.08, 5e-4), "AU12": (0.14, 5e-11), "AU20": (0.08, 1e-4),
}
# (z, p upper bound) printed per emotion.
PAPER_EMOTIONS = {
    "disappointed": {"AU1": (-4.25, 5e-5), "AU2": (-5.82, 1e-8), "AU4": (4.82, 5e-6), "AU12": (-4.86, 5e-6)},
    "satisfied": {"AU4": (-9.07, 5e-19), "AU5": (-6.62, 5e-11), "AU9": (-6.93, 5e-12), "AU25": (-3.79, 5e-4)},
    "surprised": {"AU9": (3.78, 5e-4), "AU12": (4.29, 5e-5), "AU25": (4.01, 1e-4), "AU26": (4.45, 1e-5)},
    "disgusted": {"AU4": (8.43, 1e-16), "AU5": (3.94, 1e-4), "AU9": (4.87, 1e-5)},
    "amused": {"AU6": (7.00, 1e-11), "AU9": (5.01, 1e-6), "AU12": (9.15, 1e-19), "AU20": (6.12, 1e-9),
               # Printed "p < 1e-4", but z = 3.85 itself gives p = 1.2e-4 (two-sided).
               "AU25": (3.85, 1.3e-4)},
    "scared": {"AU4": (5.60, 5e-8), "AU5": (4.39, 5e-5)},
}


@pytest.fixture(scope="module")
def results(release_table):
    return reaction_statistics(release_table)


def _row(results, au, test):
    row = results[(results["au"] == au) & (results["test"] == test)]
    assert len(row) == 1
    return row.iloc[0]


def test_tidy_table_shape(results):
    assert list(results.columns) == ["au", "test", "statistic_name", "statistic", "p", "n", "significant"]
    assert len(results) == 12 * 8
    assert results.attrs["threshold"] == pytest.approx(0.05 / 96)


def test_correlations_use_the_answered_ratings(results):
    # 14 of the 2,217 images have no overall rating (0) and are left out.
    assert set(results.loc[results["test"].isin(["rating", "extremity"]), "n"]) == {2203}
    assert set(results.loc[results["test"].isin(EMOTIONS), "n"]) == {2217}


@pytest.mark.parametrize(("test", "paper"), [("rating", PAPER_RATING), ("extremity", PAPER_EXTREMITY)])
def test_spearman_values_match_the_paper(results, test, paper):
    for au, (rho, bound) in paper.items():
        row = _row(results, au, test)
        assert row["statistic"] == pytest.approx(rho, abs=0.005), au
        assert row["p"] < bound, au
    assert significant_aus(results, test) == [au for au in AU_NAMES if au in paper]


def test_printed_detail_values(results):
    assert _row(results, "AU4", "rating")["statistic"] == pytest.approx(-0.178, abs=5e-4)
    assert _row(results, "AU4", "rating")["p"] == pytest.approx(4.2e-17, rel=0.05)
    assert _row(results, "AU12", "extremity")["statistic"] == pytest.approx(0.143, abs=5e-4)
    assert _row(results, "AU12", "extremity")["p"] == pytest.approx(1.7e-11, rel=0.05)


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_emotion_tests_match_the_paper(results, emotion):
    for au, (z, bound) in PAPER_EMOTIONS[emotion].items():
        row = _row(results, au, emotion)
        if (emotion, au) == ("disgusted", "AU4"):
            # Printed 8.43: apparently transposed digits of the recomputed 8.34.
            assert row["statistic"] == pytest.approx(8.34, abs=0.01)
        else:
            assert row["statistic"] == pytest.approx(z, abs=0.01), au
        assert row["p"] < bound, au
    # Every AU listed in the paper is significant, and no other.
    assert significant_aus(results, emotion) == [au for au in AU_NAMES if au in PAPER_EMOTIONS[emotion]]


def test_number_of_tests_is_a_parameter(release_table):
    loose = reaction_statistics(release_table, n_tests=1)
    assert loose.attrs["threshold"] == 0.05
    assert loose["significant"].sum() > reaction_statistics(release_table)["significant"].sum()
    subset = reaction_statistics(release_table, aus=["AU4", "AU12"], emotions=["amused"])
    assert len(subset) == 2 * 3 and subset.attrs["n_tests"] == 6


def test_missing_columns(release_table):
    with pytest.raises(FergiError, match=r"missing column\(s\) amused"):
        reaction_statistics(release_table.drop(columns="amused"))
    with pytest.raises(FergiError, match="n_tests"):
        reaction_statistics(release_table, n_tests=0)
