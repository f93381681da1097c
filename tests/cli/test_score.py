"""``fergi score`` on a study export, and the chain export -> score -> reproduce -> annotate.

The study is made through the web app as in ``test_study_worker`` (sessions, ratings,
rankings, generated images), with the public release's per-frame features as the
processed clips (random features would fail the face-quality filters), then exported
with ``fergi export``. Scorers are tiny random-weight models with the published layouts.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi.cli._main import main
from fergi.schema import SCORE_COLUMNS
from fergi.scorers._testing import make_scorer_weights
from fergi.study import create_app
from fergi.study.store import Clip, StudySession
from tests.helpers.study import finished_session, make_settings

PARTICIPANTS = ("001", "002", "004", "005")
ORDERS = [(2, 3, 1), (1, 2, 3), (3, 1, 2), (2, 1, 3), (1, 3, 2), (3, 2, 1)]


def _add_release_clips(app, session_id: int, release_session: Path) -> None:
    """A finished processing job whose feature files are a release session's clips."""
    store = app.state.store
    with app.state.sessionmaker() as db:
        sess = db.get(StudySession, session_id)
        for image in range(1, sess.n_images + 1):
            for clip in ("baseline", "reaction"):
                path = store.features_dir(sess.id) / f"{clip}_clip_{image}_features.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(release_session / f"{clip}_clip_{image}_features.csv", path)
                db.add(Clip(session_id=sess.id, image_index=image, clip=clip, n_frames=150,
                            features_file=store.relative(path)))
        db.commit()


def _sessions_with_three_images(folder: Path) -> list[Path]:
    ok = [d for d in folder.iterdir()
          if all((d / f"{c}_clip_{i}_features.csv").is_file() for c in ("baseline", "reaction") for i in (1, 2, 3))]
    return sorted(ok, key=lambda d: int(d.name.split("_")[1]))[:3]


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Weight fingerprints and scores go to a temporary folder, never the user's cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("FERGI_SCORERS_DIR", str(tmp_path / "fergi-scorers"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@pytest.fixture(scope="module")
def study_export(tmp_path_factory, fergi_public):
    """4 participants x 3 sessions x 3 ranked images, exported by `fergi export`."""
    tmp = tmp_path_factory.mktemp("scored-study")
    app = create_app(make_settings(tmp))
    with TestClient(app) as client:
        for k, pid in enumerate(PARTICIPANTS):
            for s, folder in enumerate(_sessions_with_three_images(fergi_public / "data" / pid)):
                p = finished_session(client, app, pid, order=ORDERS[(k + s) % len(ORDERS)])
                _add_release_clips(app, p.id, folder)
    settings = app.state.settings
    out = tmp / "export"
    assert main(["export", "--db", settings.resolved_db_url, "--media", str(settings.resolved_media_dir),
                 "--out", str(out), "--no-raw"]) == 0
    return out


@pytest.fixture(scope="module")
def weights_args(tmp_path_factory):
    weights = make_scorer_weights(tmp_path_factory.mktemp("weights"), layout="hf")
    args = []
    for name, options in weights.items():
        args += ["--weights", f"{name}={options['weights']}"]
    return args


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_writes_the_release_columns_and_caches(study_export, weights_args, tmp_path, capsys):
    data = tmp_path / "export"
    shutil.copytree(study_export, data)
    tables = sorted((data / "preparation" / "preprocessed_image_data").glob("*.csv"))
    before = {p.name: _table(p) for p in tables}
    cache = ["--cache", str(tmp_path / "cache.sqlite")]

    assert main(["score", str(data), *weights_args, *cache]) == 0
    out = capsys.readouterr().out
    assert "36 images: clip 36 scored + 0 cached" in out and "hpsv2 36 scored" in out
    after = {p.name: _table(p) for p in tables}
    for name, rows in after.items():
        assert list(rows[0])[: len(before[name][0])] == list(before[name][0])
        assert set(SCORE_COLUMNS) <= set(rows[0])
        for old, new in zip(before[name], rows, strict=True):
            # Every other column is kept as it was, to the character.
            assert {k: v for k, v in new.items() if k not in SCORE_COLUMNS} == \
                   {k: v for k, v in old.items() if k not in SCORE_COLUMNS}
            assert all(np.isfinite(float(new[c])) for c in SCORE_COLUMNS)

    # A re-run scores nothing; an edited image is scored again, alone, by every scorer.
    assert main(["score", str(data), *weights_args, *cache]) == 0
    assert "clip 0 scored + 36 cached" in capsys.readouterr().out
    np.testing.assert_allclose(pd.read_csv(tables[0])[list(SCORE_COLUMNS)],
                               pd.DataFrame(after[tables[0].name])[list(SCORE_COLUMNS)].astype(float),
                               rtol=1e-12)
    edited = data / "images" / "001" / "session_1" / "image_2.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(edited)
    assert main(["score", str(data), *weights_args, *cache, "--scorers", "clip,pickscore"]) == 0
    assert "clip 1 scored + 35 cached, pickscore 1 scored + 35 cached" in capsys.readouterr().out
    row = pd.read_csv(tables[0]).query("session_index == 1 and image_index == 2").iloc[0]
    assert row["CLIP_score"] != pytest.approx(float(after[tables[0].name][1]["CLIP_score"]))
    # Columns of scorers not run this time are kept.
    assert row["BLIP_score"] == pytest.approx(float(after[tables[0].name][1]["BLIP_score"]))

    # --no-cache recomputes: the same numbers (deterministic).
    assert main(["score", str(data), *weights_args, "--no-cache", "--scorers", "hpsv2"]) == 0
    assert "hpsv2 36 scored + 0 cached" in capsys.readouterr().out
    assert pd.read_csv(tables[1])["HPS_V2_score"].tolist() == pytest.approx(
        [float(r["HPS_V2_score"]) for r in after[tables[1].name]], abs=1e-6)


def test_score_errors_are_one_line(study_export, weights_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    data = tmp_path / "export"
    shutil.copytree(study_export, data)

    def error(args):
        assert main(["score", *map(str, args)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        return err

    assert "unknown scorer" in error([data, "--scorers", "clip,vqa"])
    assert "hpsv2: no weights found" in error([data, "--scorers", "hpsv2", "--no-cache"])
    assert "--weights 'clip': expected NAME=PATH" in error([data, "--weights", "clip"])
    assert "no such folder" in error([tmp_path / "nope"])
    bad = data / "images" / "002" / "session_2" / "image_3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert str(bad) in error([data, *weights_args, "--scorers", "clip", "--no-cache"])
    (data / "study" / "prompts.csv").unlink()
    assert "prompts.csv: no prompts table" in error([data, *weights_args, "--scorers", "clip"])


def test_score_any_folder_with_a_prompts_table(weights_args, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (48, 32), colour).save(tmp_path / "imgs" / f"{i}.png")
    pd.DataFrame({"image": [f"imgs/{i}.png" for i in range(3)], "prompt": ["a red cat"] * 3,
                  "note": ["x", "y", "z"]}).to_csv(tmp_path / "prompts.csv", index=False)
    assert main(["score", str(tmp_path), "--prompts", str(tmp_path / "prompts.csv"), *weights_args,
                 "--scorers", "clip,aesthetic", "--no-cache"]) == 0
    out = pd.read_csv(tmp_path / "scores.csv")
    assert list(out.columns) == ["image", "prompt", "note", "CLIP_score", "Aesthetic_score"]
    assert out["CLIP_score"].nunique() == 3


@pytest.mark.slow
def test_export_score_reproduce_annotate_chain(study_export, weights_args, tmp_path, capsys):
    """A new study gets Tables 1 and 2 and integrated labels once it is scored."""
    data = tmp_path / "export"
    shutil.copytree(study_export, data)
    assert main(["reproduce", "--data", str(data), "--out", str(tmp_path / "before"), "--no-figures"]) == 0
    before = json.loads((tmp_path / "before" / "results.json").read_text())
    assert "baseline scores missing" in before["preference_skipped"]

    assert main(["score", str(data), *weights_args, "--no-cache"]) == 0
    assert main(["reproduce", "--data", str(data), "--out", str(tmp_path / "after"), "--no-figures"]) == 0
    results = json.loads((tmp_path / "after" / "results.json").read_text())
    assert "preference_skipped" not in results
    assert {"table1", "table2"} <= set(results)
    printed = capsys.readouterr().out
    assert "Table 1." in printed and "Table 2." in printed and "HPS V2 Score" in printed

    assert main(["annotate", "--data", str(data), "--out", str(tmp_path / "au.jsonl")]) == 0
    assert main(["annotate", "--data", str(data), "--out", str(tmp_path / "int.jsonl"), "--integrate"]) == 0
    au = pd.read_json(tmp_path / "au.jsonl", lines=True)
    integ = pd.read_json(tmp_path / "int.jsonl", lines=True)
    keys = ["participant", "session", "image_a", "image_b"]
    both = au.merge(integ, on=keys, suffixes=("_au", "_int"))
    assert len(both) == len(au) == len(integ) > 0
    assert (integ["label_source"] == "integrated").all()

    # Eq. 10 with the shipped model's ensemble weights and a: the integrated difference is
    # the z-scored ensemble difference of the scores we wrote plus a x the valence difference.
    from fergi.preference import load_model

    integration = load_model().integration_
    scores = pd.concat([pd.read_csv(p, dtype={"session_index": int}).assign(participant=p.stem)
                        for p in (data / "preparation" / "preprocessed_image_data").glob("*.csv")])
    ensemble = pd.Series(integration.base_.score_images(scores),
                         index=pd.MultiIndex.from_arrays([scores["participant"], scores["session_index"],
                                                          scores["image_index"]]))
    pid = both["participant"].astype(str).str.zfill(3)
    ens_diff = (ensemble.loc[list(zip(pid, both["session"], both["image_a"], strict=True))].to_numpy()
                - ensemble.loc[list(zip(pid, both["session"], both["image_b"], strict=True))].to_numpy())
    expected = ens_diff + integration.a_ * both["score_difference_au"].to_numpy()
    np.testing.assert_allclose(both["score_difference_int"], expected, rtol=1e-6, atol=1e-6)
    # The scores overrule the reactions exactly where their ensemble outweighs a x valence.
    flipped = both["preferred_au"] != both["preferred_int"]
    assert flipped.any() and not flipped.all()
    assert (np.sign(expected[flipped]) != np.sign(both["score_difference_au"][flipped])).all()


def test_study_worker_score_stage_fills_the_exported_columns(tmp_path):
    """With --scorers set, processing ends with a `score` stage and exports carry the scores."""
    from fergi.scorers import create_scorer
    from tests.helpers.study import processed_study

    w = make_scorer_weights(tmp_path / "w", layout="hf")
    settings = make_settings(tmp_path, scorers="clip, hpsv2",
                             scorer_weights={"clip": str(w["clip"]["weights"]), "hpsv2": str(w["hpsv2"]["weights"])})
    app, session_id = processed_study(settings, pid="001")
    stages: dict = {}
    with app.state.sessionmaker() as db:
        sess = db.get(StudySession, session_id)
        app.state.worker._score_images(db, sess, stages.__setitem__)
        prompt = sess.prompt
        paths = [app.state.store.image_path(sess.id, i) for i in (1, 2, 3)]
    assert stages == {"score": "done"}
    out = tmp_path / "export"
    assert main(["export", "--db", settings.resolved_db_url, "--media", str(settings.resolved_media_dir),
                 "--out", str(out), "--no-raw"]) == 0
    table = pd.read_csv(out / "preparation" / "preprocessed_image_data" / "001.csv").sort_values("image_index")
    for name, column in (("clip", "CLIP_score"), ("hpsv2", "HPS_V2_score")):
        expected = create_scorer(name, **w[name]).score(paths, prompt)
        np.testing.assert_allclose(table[column], expected, rtol=1e-6)
    assert table["PickScore"].isna().all()

    # Missing weights: the stage is skipped with the reason, the job is not failed.
    broken = create_app(make_settings(tmp_path / "b", scorers="hpsv2",
                                      scorer_weights={"hpsv2": str(tmp_path / "none.pt")}))
    with TestClient(broken) as client:
        q = finished_session(client, broken, "002")
    stages.clear()
    with broken.state.sessionmaker() as db:
        broken.state.worker._score_images(db, db.get(StudySession, q.id), stages.__setitem__)
    assert stages["score"].startswith("skipped: ") and "none.pt: hpsv2 weights not found" in stages["score"]


def test_scorer_settings_are_checked(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown scorer 'vqa'"):
        make_settings(tmp_path, scorers="clip,vqa")
    assert main(["serve", "--scorers", "clip,vqa", "--data-dir", str(tmp_path)]) == 2


def _image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (48, 32), colour).save(tmp_path / "imgs" / f"{i}.png")
    pd.DataFrame({"image": [f"imgs/{i}.png" for i in range(3)],
                  "prompt": ["a “red” cat", "ﬁsh", "a dog"]}).to_csv(tmp_path / "prompts.csv", index=False)
    return tmp_path / "prompts.csv"


def test_score_precision_is_fp32_by_default_and_part_of_the_cache_key(weights_args, tmp_path, capsys):
    table = _image_folder(tmp_path)
    base = ["score", str(tmp_path), "--prompts", str(table), *weights_args, "--scorers", "clip,pickscore",
            "--cache", str(tmp_path / "cache.sqlite")]
    assert main(base) == 0
    assert "clip 3 scored + 0 cached, pickscore 3 scored + 0 cached" in capsys.readouterr().out
    fp32 = pd.read_csv(tmp_path / "scores.csv")
    # fp16 scores are not taken from the fp32 ones, nor the other way round.
    assert main([*base, "--precision", "fp16"]) == 0
    assert "clip 3 scored + 0 cached, pickscore 3 scored + 0 cached" in capsys.readouterr().out
    fp16 = pd.read_csv(tmp_path / "scores.csv")
    assert not np.array_equal(fp16["PickScore"], fp32["PickScore"])
    np.testing.assert_allclose(fp16["PickScore"], fp32["PickScore"], atol=0.5)
    assert main(base) == 0
    assert "clip 0 scored + 3 cached, pickscore 0 scored + 3 cached" in capsys.readouterr().out
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "scores.csv")["PickScore"], fp32["PickScore"])
    assert main([*base, "--precision", "fp16"]) == 0
    assert "pickscore 0 scored + 3 cached" in capsys.readouterr().out
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "scores.csv")["PickScore"], fp16["PickScore"])


def test_score_hpsv2_is_v2_0_and_hpsv2_1_has_its_own_column(weights_args, tmp_path, capsys):
    table = _image_folder(tmp_path)
    hps_folder = Path(next(a for a in weights_args if a.startswith("hpsv2=")).split("=", 1)[1])
    v21_file = hps_folder.parent / "HPS_v2.1_compressed.pt"
    assert v21_file.is_file()
    base = ["score", str(tmp_path), "--prompts", str(table), "--no-cache"]

    assert main([*base, "--scorers", "hpsv2", "--weights", f"hpsv2={v21_file}"]) == 2
    err = capsys.readouterr().err
    assert "this is the hpsv2.1 checkpoint, not hpsv2's; use --scorers hpsv2.1" in err

    assert main([*base, *weights_args, "--scorers", "hpsv2,hpsv2.1"]) == 0
    out = pd.read_csv(tmp_path / "scores.csv")
    assert list(out.columns) == ["image", "prompt", "HPS_V2_score", "HPS_V2.1_score"]
    assert not np.allclose(out["HPS_V2_score"], out["HPS_V2.1_score"])
    # The default is the release's six: no v2.1 column.
    (tmp_path / "scores.csv").unlink()
    assert main([*base, *weights_args]) == 0
    assert list(pd.read_csv(tmp_path / "scores.csv").columns) == ["image", "prompt", *SCORE_COLUMNS]
