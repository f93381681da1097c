"""The accuracy-versus-coverage figure of every preference score, on the public release."""

from __future__ import annotations


def test_accuracy_coverage_figure(paper_tables, tmp_path):
    from fergi.plots._coverage import plot_accuracy_coverage

    paths = plot_accuracy_coverage(paper_tables["coverage"], tmp_path / "cov")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 10_000 for p in paths)
