"""`fergi reproduce` end to end on the public release, and CLI error handling."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from fergi.cli import main


@pytest.fixture(scope="module")
def reproduced_run(fergi_public, tmp_path_factory):
    """One ``fergi reproduce`` of the release for the module: its folder and what it printed."""
    out = tmp_path_factory.mktemp("reproduce")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["reproduce", "--data", str(fergi_public), "--out", str(out)])
    assert status == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def reproduced(reproduced_run):
    return reproduced_run[0]


@pytest.mark.slow
def test_results_json(reproduced):
    results = json.loads((reproduced / "results.json").read_text())
    assert results["participants"] == {
        "all": 33, "screened_out": ["002", "004", "039"], "screening": "baseline AU4", "included": 30
    }
    assert results["n_images"] == 2827
    assert results["n_reaction_clips_valid"] == 2217
    stats = results["statistics"]
    assert stats["rating"]["AU4"]["rho"] == pytest.approx(-0.178, abs=5e-4)
    assert stats["extremity"]["AU12"]["p"] < 5e-11
    assert stats["emotions"]["AU12"]["amused"]["z"] == pytest.approx(9.15, abs=0.01)
    assert sorted(k for k, v in stats["rating"].items() if v["significant"]) == ["AU12", "AU2", "AU4", "AU9"]
    # The release's untrained score columns are flagged beside the Table 1 figures they give.
    flagged = sorted(c for c, e in results["score_columns"].items() if e["untrained_in_release"])
    assert flagged == ["Aesthetic_score", "BLIP_score"]
    assert results["table1"]["accuracy"]["Aesthetic"] == pytest.approx(51.39, abs=0.005)


@pytest.mark.slow
def test_figures_are_written(reproduced):
    for stem in ("fig3_activation_by_rating", "fig4_activation_by_emotion"):
        for suffix in (".png", ".pdf"):
            path = reproduced / f"{stem}{suffix}"
            assert path.stat().st_size > 10_000, path
    assert (reproduced / "fig3_activation_by_rating.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_terminal_output(reproduced_run):
    text = reproduced_run[1]
    assert "screened out for unreliable baseline AU4: 002, 004, 039" in text
    assert "overall rating    AU2, AU4, AU9, AU12" in text
    assert "amused            AU6, AU9, AU12, AU20, AU25" in text
    assert "Untrained score columns: Aesthetic_score and BLIP_score" in text
    assert sum("[untrained in release: chance]" in line for line in text.splitlines()) == 4


def test_wrong_path_is_a_one_line_error(tmp_path, capsys):
    status = main(["reproduce", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-download"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_help_lists_the_pipeline(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "reproduce" in text and "preference labels" in text


def test_unwritable_output_is_a_one_line_error(fergi_public, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    status = main(["reproduce", "--data", str(fergi_public), "--out", str(blocker / "sub"), "--no-preference"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot create the output folder" in err and err.count("\n") == 1
