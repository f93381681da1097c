"""`fergi serve` and `fergi export` from the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from fergi.cli._main import main
from tests.helpers.services import free_port
from tests.helpers.study import make_settings, processed_study


@pytest.mark.slow
def test_serve_starts_with_zero_configuration(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERGI_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fergi", "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "fergi serve did not come up"
            time.sleep(0.2)
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "Participant ID" in page.text
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    # It says where the data goes and how to reach the admin pages.
    assert f"database sqlite:///{tmp_path / 'fergi-study' / 'study.sqlite3'}" in output
    assert f"media folder {tmp_path / 'fergi-study' / 'media'}" in output
    match = re.search(rf"admin page http://127\.0\.0\.1:{port}/admin\?token=(\S+)", output)
    assert match and len(match.group(1)) >= 20
    assert (tmp_path / "fergi-study" / "study.sqlite3").is_file()


def test_serve_options_become_settings(tmp_path, monkeypatch):
    from fergi.cli._main import build_parser
    from fergi.cli.serve import settings_from_args

    monkeypatch.setenv("FERGI_N_IMAGES", "4")
    monkeypatch.delenv("FERGI_ADMIN_TOKEN", raising=False)
    args = build_parser().parse_args([
        "serve", "--data-dir", str(tmp_path / "d"), "--db", "sqlite:///x.db", "--media", str(tmp_path), "--generator", "placeholder",
        "--generator-option", "size=64", "--present-s", "3", "--prompt-llm", "openai",
        "--llm-base-url", "http://127.0.0.1:9/v1",
    ])
    settings = settings_from_args(args)
    assert settings.resolved_db_url == "sqlite:///x.db" and settings.resolved_media_dir == tmp_path
    assert settings.generator_options == {"size": 64} and settings.present_s == 3.0
    assert settings.n_images == 4 and settings.prompt_llm == "openai"
    # The generated admin token is kept (owner-only) so the admin URL survives a restart.
    token_file = tmp_path / "d" / "admin_token"
    assert token_file.read_text().strip() == settings.admin_token
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert settings_from_args(args).admin_token == settings.admin_token
    monkeypatch.setenv("FERGI_ADMIN_TOKEN", "from-env")
    assert settings_from_args(args).admin_token == "from-env"
    # An open study by default; --invitations-only is FERGI_ALLOW_NEW_PARTICIPANTS=false.
    assert settings.allow_new_participants is True
    closed = build_parser().parse_args(["serve", "--data-dir", str(tmp_path / "d"), "--invitations-only"])
    assert settings_from_args(closed).allow_new_participants is False


def test_serve_help_explains_who_can_start_a_session(capsys):
    from fergi.cli._main import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "FERGI_ALLOW_NEW_PARTICIPANTS=false" in text and "--invitations-only" in text
    assert "an invited ID is only opened through its link, typing it is refused" in text


def test_serve_refuses_bad_options_with_one_line(capsys, tmp_path):
    assert main(["serve", "--data-dir", str(tmp_path), "--generator", "nonsense"]) == 2
    assert "unknown image generator 'nonsense'" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path), "--generator-option", "size"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path), "--present-s", "-1"]) == 2
    assert "present_s" in capsys.readouterr().err


def test_export_command(tmp_path, capsys):
    app, _ = processed_study(make_settings(tmp_path))
    settings = app.state.settings
    out = tmp_path / "out"
    code = main(["export", "--db", settings.resolved_db_url, "--media", str(settings.resolved_media_dir), "--out", str(out), "--no-raw"])
    assert code == 0
    assert "exported 1 session(s) of 1 participant(s)" in capsys.readouterr().out
    assert (out / "preparation" / "preprocessed_image_data" / "001.csv").is_file()
    assert not (out / "raw").exists()
    code = main(["export", "--db", str(tmp_path / "nope.sqlite3"), "--media", str(tmp_path), "--out", str(out)])
    assert code == 2 and "nope.sqlite3: no such database file" in capsys.readouterr().err


def test_export_never_overwrites_the_study_data(tmp_path, capsys):
    app, _ = processed_study(make_settings(tmp_path))
    settings = app.state.settings
    data = tmp_path / "study"
    db_file = data / "study.sqlite3"
    media = settings.resolved_media_dir
    before = sorted(str(x) for x in data.rglob("*"))
    # The data folder itself, a folder inside it, the media folder and a parent of both.
    for out in (data, data / "export", media, media / "x", tmp_path):
        code = main(["export", "--db", str(db_file), "--media", str(media), "--out", str(out), "--overwrite"])
        assert code == 2, out
        err = capsys.readouterr().err
        assert "overlaps the study's" in err and err.count("\n") == 1
    assert sorted(str(x) for x in data.rglob("*")) == before
    assert db_file.is_file()


def test_failed_export_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    from fergi.study import _export

    app, _ = processed_study(make_settings(tmp_path))
    settings = app.state.settings
    out = tmp_path / "out"
    args = ["export", "--db", settings.resolved_db_url, "--media", str(settings.resolved_media_dir),
            "--out", str(out), "--overwrite"]
    assert main(args) == 0
    previous = sorted(str(x.relative_to(out)) for x in out.rglob("*"))
    assert "preparation/valid_sessions.json" in previous

    def broken(*_args, **_kwargs):
        raise _export.FergiError("--media: missing feature file (simulated)")

    monkeypatch.setattr(_export, "image_rows", broken)
    assert main(args) == 2
    assert "simulated" in capsys.readouterr().err
    assert sorted(str(x.relative_to(out)) for x in out.rglob("*")) == previous
    # No half-written folder is left beside it.
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(".out")) == []
    monkeypatch.undo()
    assert main(args) == 0
    assert sorted(str(x.relative_to(out)) for x in out.rglob("*")) == previous
