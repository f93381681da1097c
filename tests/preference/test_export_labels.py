"""Issue 12: preference labels exported for reward-model and DPO training.

The public release has no images: each test study links the release's ``data/`` and
``preparation/`` and adds an ``images/`` folder of solid-colour PNGs, one colour per
image key, so a test can tell from a decoded image which image it is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fergi.cli import main
from fergi.datasets import load_images
from fergi.preference import pseudonym, split_name, study_salt
from fergi.preference.export import PICKAPIC_COLUMNS
from tests.helpers.paths import BENCHMARKS

SMALL = ("001", "005", "006", "007")


def _colour(participant: str, session: int, image: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{participant}/{session}/{image}".encode()).digest()
    # Coarse steps: JPEG moves a solid colour by a few levels at most.
    return tuple(int(v) // 32 * 32 + 16 for v in digest[:3])


def _make_study(root: Path, release: Path, participants=None) -> Path:
    """A study folder: the release's features (linked) and generated images."""
    from PIL import Image

    root.mkdir(parents=True)
    (root / "preparation").symlink_to(release / "preparation")
    if participants is None:
        (root / "data").symlink_to(release / "data")
    else:
        (root / "data").mkdir()
        for p in participants:
            (root / "data" / p).symlink_to(release / "data" / p)
    images = load_images(release)
    for p, s, i in zip(images["participant"], images["session"], images["image"], strict=True):
        if participants is not None and str(p) not in participants:
            continue
        path = root / "images" / str(p) / f"session_{s}" / f"image_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), _colour(str(p), int(s), int(i))).save(path)
    return root


def _uid_keys(root: Path) -> dict:
    """image uid -> (participant, session, image), from the study's own salt."""
    salt = study_salt(root)
    out = {}
    for image_file in (root / "images").glob("*/session_*/image_*.png"):
        p = image_file.parent.parent.name
        s = int(image_file.parent.name.removeprefix("session_"))
        i = int(image_file.stem.removeprefix("image_"))
        out[f"{pseudonym(p, salt)}-s{s}-i{i}"] = (p, s, i)
    return out


def _mean_colour(data) -> np.ndarray:
    from PIL import Image

    image = data if hasattr(data, "convert") else Image.open(io.BytesIO(data))
    return np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)


def _export(*args) -> int:
    return main(["export-labels", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, fergi_public):
    root = _make_study(tmp_path_factory.mktemp("small") / "study", fergi_public, SMALL)
    # What `fergi export` writes beside the release layout: prompts and sessions.
    (root / "study").mkdir()
    with (root / "study" / "prompts.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["participant", "session", "session_type", "prompt", "generator",
                         "structured_input", "generated_prompts"])
        for p in SMALL:
            for s in range(1, 25):
                writer.writerow([p, s, "free", f"prompt {p} {s}", "sd-test", "", "[]"])
    with (root / "study" / "sessions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["participant", "session", "session_type", "consent_version",
                         "consent_at", "share_video", "created_at", "finished_at", "exported",
                         "reason"])
        for p in SMALL:
            for s in range(1, 25):
                writer.writerow([p, s, "free", "2", "2026-01-01 10:00:00", "False",
                                 "2026-01-01 10:00:00", "2026-01-01 10:10:00", "True", ""])
    return root


@pytest.fixture(scope="module")
def release_export(tmp_path_factory, fergi_public):
    """The whole release, every source, the paper's AUcomb under strict LOPO."""
    base = tmp_path_factory.mktemp("release")
    root = _make_study(base / "study", fergi_public)
    out = base / "labels"
    assert _export(root, "--out", out, "--format", "pickapic", "--source", "all", "--lopo",
                   "--screen", "--model", "paper", "--shard-size", "3000") == 0
    return root, out


# ----------------------------------------------------------------------------- pickapic
@pytest.mark.slow
def test_pickapic_columns_types_and_shards(release_export):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, out = release_export
    shards = sorted((out / "data").glob("*.parquet"))
    # One split per source (685, 1881 and 5568 rows), in 3000-row shards.
    assert [s.name for s in shards] == [
        "train_integrated-00000-of-00001.parquet", "train_ranking-00000-of-00002.parquet",
        "train_ranking-00001-of-00002.parquet", "train_reactions-00000-of-00001.parquet"]
    schema = pq.read_schema(shards[0])
    expected = {"string": pa.string(), "binary": pa.binary(), "float64": pa.float64(),
                "bool": pa.bool_(), "int64": pa.int64(), "timestamp[ns]": pa.timestamp("ns")}
    n = len(PICKAPIC_COLUMNS)
    assert schema.names[:n] == [name for name, _ in PICKAPIC_COLUMNS]
    assert [schema.field(i).type for i in range(n)] == [expected[t] for _, t in PICKAPIC_COLUMNS]
    assert schema.names[n:] == ["label_source", "confidence", "participant", "session"]
    table = pq.read_table(out / "data").to_pandas()
    assert len(table) == json.loads((out / "export_info.json").read_text())["rows"]
    assert set(table["label_source"]) == {"reactions", "integrated", "ranking"}
    for shard in shards:
        source = shard.name.split("-")[0].removeprefix("train_")
        assert set(pq.read_table(shard).column("label_source").to_pylist()) == {source}
    assert table["are_different"].all() and table["has_label"].all()
    assert set(zip(table["label_0"], table["label_1"], strict=True)) <= {(1.0, 0.0), (0.0, 1.0)}


@pytest.mark.slow
def test_lopo_reaction_labels_agree_with_rankings_as_table1(release_export):
    """Exported reaction labels agree with the rankings at Table 1's 72.70 % (685 pairs)."""
    import pyarrow.parquet as pq

    root, out = release_export
    table = pq.read_table(out / "data").to_pandas()
    truth = table[table["label_source"] == "ranking"].set_index(["image_0_uid", "image_1_uid"])
    reactions = table[table["label_source"] == "reactions"]
    joined = reactions.join(truth["best_image_uid"].rename("ranked_best"),
                            on=["image_0_uid", "image_1_uid"], how="inner")
    assert len(reactions) == 685 and len(joined) == 685
    agree = int((joined["best_image_uid"] == joined["ranked_best"]).sum())
    assert agree == 498 and round(100 * agree / 685, 2) == 72.70
    card = (out / "README.md").read_text()
    assert "**72.70 %** (498 of 685" in card and "leave-one-participant-out" in card
    assert "Abstention rule" in card and "Consent" in card
    # Screened-out participants have rankings but no reaction labels.
    salt = study_salt(root)
    screened = {pseudonym(p, salt) for p in ("002", "004", "039")}
    assert screened <= set(truth["participant"])
    assert not screened & set(reactions["participant"])


@pytest.mark.slow
def test_diffusion_dpo_style_loader_gets_the_preferred_image(release_export):
    """Read as diffusers' Diffusion-DPO script does (train_diffusion_dpo.py,
    ``preprocess_train``): load_dataset(folder, split=...), jpg_0 first unless label_0 == 0;
    then the preferred image is the first of the pair in every row of every split."""
    import datasets

    root, out = release_export
    keys = _uid_keys(root)
    sizes = {}
    for split in ("train_reactions", "train_integrated", "train_ranking"):
        train = datasets.load_dataset(str(out), split=split, cache_dir=str(out.parent / "hf-cache"))
        sizes[split] = len(train)
        assert set(train["label_source"]) == {split.removeprefix("train_")}
        for row in train:
            first, _ = (row["jpg_1"], row["jpg_0"]) if row["label_0"] == 0 else (row["jpg_0"], row["jpg_1"])
            best = keys[row["best_image_uid"]]
            assert np.abs(_mean_colour(first) - np.array(_colour(*best))).max() < 6
    assert sizes == {"train_reactions": 685, "train_integrated": 1881, "train_ranking": 5568}


@pytest.mark.slow
def test_release_export_leaks_no_identity_salt_or_features(release_export):
    root, out = release_export
    salt_text = (root / ".fergi_salt").read_text().strip()
    files = [f for f in out.rglob("*") if f.is_file()]
    assert {f.suffix for f in files} == {".parquet", ".md", ".json"}
    for f in files:
        assert salt_text.encode() not in f.read_bytes()
    import pyarrow.parquet as pq

    table = pq.read_table(out / "data").to_pandas()
    assert not set(table["participant"]) & set(load_images(root)["participant"].astype(str))
    assert not [c for c in table.columns if "activation" in c]
    assert (os.stat(root / ".fergi_salt").st_mode & 0o077) == 0


# ----------------------------------------------------------------------------- other formats
def test_hf_export_loads_with_image_features(small_study, tmp_path, capsys):
    import datasets

    out = tmp_path / "hf"
    assert _export(small_study, "--out", out, "--format", "hf", "--source", "reactions,ranking",
                   "--abstentions", "tie", "--shard-size", "200") == 0
    loaded = datasets.load_from_disk(str(out))
    # Two sources: one split each, never mixed rows.
    assert isinstance(loaded, datasets.DatasetDict)
    assert list(loaded) == ["train_reactions", "train_ranking"]
    assert set(loaded["train_reactions"]["label_source"]) == {"reactions"}
    assert set(loaded["train_ranking"]["label_source"]) == {"ranking"}
    keys = _uid_keys(small_study)
    for split, train in loaded.items():
        assert isinstance(train.features["jpg_0"], datasets.Image)
        assert train.column_names[:len(PICKAPIC_COLUMNS)] == [n for n, _ in PICKAPIC_COLUMNS]
        for row in train.select(range(0, len(train), 11)):
            key = keys[row["image_0_uid"]]
            assert np.abs(_mean_colour(row["jpg_0"]) - np.array(_colour(*key))).max() < 6
            assert row["caption"] == f"prompt {key[0]} {key[1]}" and row["model_0"] == "sd-test"
            assert str(row["created_at"]).startswith("2026-01-01 10:10")
            if row["label_0"] == 0.5:
                assert row["best_image_uid"] == "" and split == "train_reactions"
    # Abstentions written as Pick-a-Pic ties, in the reaction split only.
    assert set(loaded["train_reactions"]["label_0"]) == {0.0, 0.5, 1.0}
    assert set(loaded["train_ranking"]["label_0"]) == {0.0, 1.0}
    n_ties = loaded["train_reactions"]["label_0"].count(0.5)
    # Ties are warned about, and the card says which trainers misread them.
    printed = capsys.readouterr().out
    assert "one split per source: train_reactions, train_ranking" in printed
    assert f"warning: {n_ties} rows are 0.5/0.5 ties" in printed and "jpg_0 preferred" in printed
    card = (out / "README.md").read_text()
    assert "## Ties" in card and f"{n_ties} rows are 0.5/0.5 ties" in card
    assert "train_diffusion_dpo.py" in card and "only `if label_0 == 0`" in card
    assert "SalesforceAIResearch/DiffusionDPO" in card and "HPSLoss" in card
    assert json.loads((out / "export_info.json").read_text())["ties"] == n_ties
    assert "consent text version(s): 2" in card
    assert not (out / "data").exists() and not (out / ".cache").exists()


def test_tie_export_is_logged(small_study, tmp_path, caplog):
    import logging

    from fergi.preference import export_labels

    with caplog.at_level(logging.WARNING, logger="fergi.preference.export._export"):
        summary = export_labels(small_study, tmp_path / "ties", format="pickapic",
                                abstentions="tie")
    assert summary.n_ties > 0
    assert f"{summary.n_ties} of {summary.n_rows} rows are 0.5/0.5 ties" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fergi.preference.export._export"):
        dropped = export_labels(small_study, tmp_path / "drop", format="pickapic")
    assert dropped.n_ties == 0 and "ties" not in caplog.text
    assert "## Ties" not in (tmp_path / "drop" / "README.md").read_text()


class HPDLikeDataset:
    """HPSv2's training loader, ``HPDDataset`` (hpsv2/src/training/data.py, is_train=True),
    re-written without torch and without its bare ``except:`` (which retries the next item
    on any error, so a wrong path would go unnoticed): the table is
    ``pyarrow.Table.from_pylist(json.load(meta_file))``, every image is
    ``Image.open(os.path.join(image_folder, name))`` for ``name`` in the item's
    ``file_path``, the label is ``human_preference`` and the caption ``prompt``; HPSv2's
    config passes ``--train-data HPD/train.json --train-folder HPD/train``."""

    def __init__(self, meta_file, image_folder):
        import pyarrow as pa

        with open(meta_file) as handle:
            self.table = pa.Table.from_pylist(json.load(handle))
        self.image_folder = image_folder

    def __len__(self):
        return len(self.table)

    def __getitem__(self, idx):
        from PIL import Image

        images = [Image.open(os.path.join(self.image_folder, name))
                  for name in self.table.column("file_path")[idx].as_py()]
        label = self.table.column("human_preference")[idx].as_py()
        caption = self.table.column("prompt")[idx].as_py()
        return images, label, caption


def test_hpdv2_export_reads_as_hpsv2_reads_it(small_study, tmp_path):
    out = tmp_path / "hpd"
    assert _export(small_study, "--out", out, "--format", "hpdv2", "--source", "ranking") == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "export_info.json", "train", "train.json"]
    dataset = HPDLikeDataset(out / "train.json", str(out / "train"))
    keys = _uid_keys(small_study)
    ranks = load_images(small_study).set_index(["participant", "session", "image"])["rank_score"]
    assert len(dataset) == json.loads((out / "export_info.json").read_text())["rows"] > 100
    for idx in range(len(dataset)):
        images, label, caption = dataset[idx]  # every image found: Image.open raises otherwise
        assert len(images) == 2 and sorted(label) == [0, 1]
        # HPSv2's collate_HPD splits the labels per image; HPSLoss weighs image k by label[k].
        names = dataset.table.column("file_path")[idx].as_py()
        winner, loser = (names[0], names[1]) if label[0] == 1 else (names[1], names[0])
        assert ranks[keys[Path(winner).stem]] > ranks[keys[Path(loser).stem]]
        p, s, _ = keys[Path(winner).stem]
        assert caption == f"prompt {p} {s}"
        assert np.abs(_mean_colour(images[0]) - np.array(_colour(*keys[Path(names[0]).stem]))).max() < 6
    entries = json.loads((out / "train.json").read_text())
    assert all(isinstance(v, int) for e in entries for v in e["human_preference"])
    assert all("image_path" not in e and not e["file_path"][0].startswith("train/") for e in entries)


def test_source_all_writes_one_split_per_source_in_every_format(small_study, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    # The shipped model has an integration: every source can have rows.
    pick, hpd = tmp_path / "pick", tmp_path / "hpd"
    assert _export(small_study, "--out", pick, "--format", "pickapic", "--source", "all",
                   "--shard-size", "300") == 0
    info = json.loads((pick / "export_info.json").read_text())
    splits = ["train_reactions", "train_integrated", "train_ranking"]
    present = [split_name(s) for s in info["per_source"]]
    assert present == info["splits"] == splits
    for split in present:
        shards = sorted((pick / "data").glob(f"{split}-*.parquet"))
        assert shards and shards[-1].name.endswith(f"-of-{len(shards):05d}.parquet")
        table = pd.concat([pq.read_table(shard).to_pandas() for shard in shards])
        assert set(table["label_source"]) == {split.removeprefix("train_")}
        assert len(table) == info["per_source"][split.removeprefix("train_")]
    assert not list((pick / "data").glob("train-*"))
    # load_dataset(OUT), as the DPO trainers call it, finds every split by name.
    loaded = datasets.load_dataset(str(pick), cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(loaded) == sorted(present)
    assert {split: set(loaded[split]["label_source"]) for split in loaded} == {
        split: {split.removeprefix("train_")} for split in present}
    assert _export(small_study, "--out", hpd, "--format", "hpdv2", "--source", "all") == 0
    assert not (hpd / "train.json").exists()
    for split in present:
        entries = json.loads((hpd / f"{split}.json").read_text())
        assert {e["label_source"] for e in entries} == {split.removeprefix("train_")}
        dataset = HPDLikeDataset(hpd / f"{split}.json", str(hpd / "train"))
        for idx in range(0, len(dataset), 13):
            assert len(dataset[idx][0]) == 2


def test_jsonl_keeps_the_annotate_format_and_labels(small_study, tmp_path):
    from fergi.preference import annotate_reactions, load_reaction_data

    out = tmp_path / "jsonl"
    assert _export(small_study, "--out", out, "--format", "jsonl") == 0
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"participant", "session", "image_a", "image_b", "preferred",
                            "score_difference", "above_threshold", "label_source",
                            "normalization", "confidence"}
    data, _ = load_reaction_data(small_study)
    expected = annotate_reactions(data)
    expected = expected[expected["confident"]]
    salt = study_salt(small_study)
    want = {(pseudonym(p, salt), s, a, b, int(w)) for p, s, a, b, w in
            zip(expected["participant"], expected["session"], expected["image_a"],
                expected["image_b"], expected["preferred"], strict=True)}
    got = {(r["participant"], r["session"], r["image_a"], r["image_b"], r["preferred"]) for r in rows}
    assert got == want and all(r["above_threshold"] for r in rows)


# ----------------------------------------------------------------------------- privacy
def test_salt_is_made_once_and_withdrawn_participants_are_left_out(small_study, tmp_path):
    salt = study_salt(small_study)
    assert study_salt(small_study) == salt
    names = {p: pseudonym(p, salt) for p in SMALL}
    (small_study / "withdrawn.json").write_text(json.dumps(["005"]))
    try:
        out = tmp_path / "w"
        assert _export(small_study, "--out", out, "--format", "jsonl", "--source", "all",
                       "--exclude-participants", "006") == 0
    finally:
        (small_study / "withdrawn.json").unlink()
    who = {json.loads(line)["participant"] for line in (out / "labels.jsonl").read_text().splitlines()}
    assert who == {names["001"], names["007"]}
    assert "2 in this study" in (out / "README.md").read_text()


# ----------------------------------------------------------------------------- bad input
def _no_partial(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_empty_label_set_is_an_error_and_leaves_nothing(small_study, tmp_path, capsys):
    out = tmp_path / "empty"
    assert _export(small_study, "--out", out, "--format", "pickapic",
                   "--min-confidence", "1e9") == 2
    assert "no label to export" in _one_line_error(capsys)
    _no_partial(out)


def test_no_confident_pair_names_all_pairs_and_source_ranking(small_study, tmp_path, capsys):
    """A small study where the model abstains on every pair: the README's example fails
    with a line that names the two ways to get labels (issue 21)."""
    from fergi.preference import DEFAULT_MODEL, default_model_path

    doc = json.loads(default_model_path(DEFAULT_MODEL).read_text())

    def abstain(node):  # every abstention threshold out of reach
        if isinstance(node, dict):
            for key, value in node.items():
                node[key] = 1e9 if key == "threshold" else abstain(value)
        elif isinstance(node, list):
            return [abstain(v) for v in node]
        return node

    model = tmp_path / "abstaining.json"
    model.write_text(json.dumps(abstain(doc)))
    out = tmp_path / "none"
    assert _export(small_study, "--out", out, "--format", "pickapic", "--model", model) == 2
    err = _one_line_error(capsys)
    assert "no label to export (no pair reached the model's abstention threshold)" in err
    assert "--all-pairs" in err and "--source ranking" in err and str(small_study) in err
    _no_partial(out)
    # Both ways out work.
    assert _export(small_study, "--out", tmp_path / "all", "--format", "jsonl", "--model", model,
                   "--all-pairs") == 0
    assert _export(small_study, "--out", tmp_path / "rank", "--format", "jsonl", "--model", model,
                   "--source", "reactions,ranking") == 0


def test_lopo_on_one_participant_says_what_to_do(fergi_public, tmp_path, capsys):
    study = _make_study(tmp_path / "one", fergi_public, ("001",))
    out = tmp_path / "labels"
    assert _export(study, "--out", out, "--format", "pickapic", "--lopo") == 2
    err = _one_line_error(capsys)
    assert "--lopo" in err and "at least 2 participants" in err and "--source ranking" in err
    _no_partial(out)
    assert _export(study, "--out", out, "--format", "pickapic") == 0


def test_missing_image_is_an_error_and_keeps_the_previous_export(small_study, tmp_path, capsys):
    out = tmp_path / "prev"
    assert _export(small_study, "--out", out, "--format", "pickapic", "--source", "ranking") == 0
    before = sorted(p.name for p in out.rglob("*"))
    missing = small_study / "images" / "006" / "session_2" / "image_3.png"
    kept = missing.read_bytes()
    missing.unlink()
    try:
        assert _export(small_study, "--out", out, "--format", "pickapic", "--source", "ranking",
                       "--overwrite") == 2
    finally:
        missing.write_bytes(kept)
    err = _one_line_error(capsys)
    assert str(missing) in err and "missing image" in err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_unwritable_or_occupied_out_is_an_error(small_study, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "labels"
    assert _export(small_study, "--out", out, "--format", "jsonl") == 2
    assert "cannot write there" in _one_line_error(capsys)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    assert _export(small_study, "--out", occupied, "--format", "jsonl") == 2
    assert "not empty" in _one_line_error(capsys)
    assert (occupied / "keep.txt").read_text() == "mine"
    assert _export(small_study, "--out", small_study.parent, "--format", "jsonl",
                   "--overwrite") == 2
    assert "study folder" in _one_line_error(capsys)
    assert (small_study / "data").is_dir()


def test_export_labels_library_matches_the_cli(small_study, tmp_path):
    from fergi.preference import export_labels

    summary = export_labels(small_study, tmp_path / "lib", format="jsonl", source="ranking")
    assert summary.per_source == {"ranking": summary.n_rows} and summary.n_rows > 0
    from fergi.datasets import load_invalid_images

    images = load_images(small_study)
    invalid = load_invalid_images(small_study)
    keys = zip(images["participant"].astype(str), images["session"], images["image"], strict=True)
    valid = images[np.array([k not in invalid for k in keys]) & images["participant"].isin(SMALL)
                   & images["rank_score"].notna()]
    # Every within-session pair of valid ranked images is a ranking label.
    n_pairs = sum(len(g) * (len(g) - 1) // 2 for _, g in valid.groupby(["participant", "session"]))
    assert summary.n_rows == n_pairs


# ----------------------------------------------------------------------------- benchmark
def test_export_benchmark_quick_mode(capsys):
    import importlib.util

    path = BENCHMARKS / "bench_export.py"
    spec = importlib.util.spec_from_file_location("bench_export", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(["--quick"])
    assert sorted(figures) == [2_000, 20_000]
    for n, entry in figures.items():
        assert entry["pairs"] == n and entry["shards"] == n // 1_000
        assert entry["pairs_per_s"] > 0 and entry["peak_rss_mb"] > 0
    assert "peak RSS" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a fergi study
def test_study_exported_by_fergi_export(tmp_path):
    """`fergi serve` -> `fergi export` -> `fergi export-labels`: the study's own files."""
    import pyarrow.parquet as pq

    from tests.helpers.study import make_settings, processed_study

    app, _ = processed_study(make_settings(tmp_path), order=(2, 3, 1))
    settings = app.state.settings
    study = tmp_path / "exported"
    assert main(["export", "--db", settings.resolved_db_url, "--media",
                 str(settings.resolved_media_dir), "--out", str(study)]) == 0
    out = tmp_path / "labels"
    assert _export(study, "--out", out, "--format", "pickapic", "--source", "ranking") == 0
    table = pq.read_table(out / "data").to_pandas()
    prompts = pd.read_csv(study / "study" / "prompts.csv")
    assert len(table) == 3 and set(table["caption"]) == {prompts["prompt"].iloc[0]}
    assert set(table["model_0"]) == {prompts["generator"].iloc[0]}
    assert table["created_at"].notna().all()
    # Ranked 2 > 3 > 1: image 2 wins both its pairs, image 3 beats image 1.
    best = {(r.image_0_uid[-1], r.image_1_uid[-1]): r.best_image_uid[-1] for r in table.itertuples()}
    assert best == {("1", "2"): "2", ("1", "3"): "3", ("2", "3"): "2"}
    assert not list(out.rglob("*.mp4")) and not list(out.rglob("*.webm"))
    assert "1 of 1 exported sessions have recorded consent" in (out / "README.md").read_text()


# ----------------------------------------------------------------------------- decision rules
def test_decide_follows_threshold_all_pairs_min_confidence_and_ties():
    from fergi.preference.export import decide

    labels = pd.DataFrame({
        "participant": "001", "session": 1, "image_a": [1, 1, 1, 2, 3],
        "image_b": [2, 3, 4, 3, 4],
        "preferred": pd.array([2, 1, pd.NA, 2, 4], dtype="Int64"),
        "score_difference": [-0.5, 0.1, 0.0, 0.3, -1.0],
        "confidence": [0.5, 0.1, 0.0, 1.0, 1.0],
        "confident": [True, False, False, True, True],
        "label_source": ["reactions", "reactions", "reactions", "ranking", "integrated"],
        "normalization": "none", "rank_a": np.nan, "rank_b": np.nan,
    })

    def pairs(frame):
        return {(a, b): (l0, l1) for a, b, l0, l1 in
                zip(frame["image_a"], frame["image_b"], frame["label_0"], frame["label_1"], strict=True)}

    # Default: confident model labels and every decided ranking label; image_b preferred -> 0/1.
    assert pairs(decide(labels)) == {(1, 2): (0.0, 1.0), (2, 3): (1.0, 0.0), (3, 4): (0.0, 1.0)}
    # --all-pairs: the below-threshold pair is labelled by its sign; the exact tie is not.
    assert pairs(decide(labels, all_pairs=True))[(1, 3)] == (1.0, 0.0)
    assert (1, 4) not in pairs(decide(labels, all_pairs=True))
    # --abstentions tie: the abstention and the exact tie become Pick-a-Pic ties.
    tied = pairs(decide(labels, abstentions="tie"))
    assert tied[(1, 3)] == tied[(1, 4)] == (0.5, 0.5) and len(tied) == 5
    # --min-confidence: applies to model labels only, never to the ranking.
    assert pairs(decide(labels, min_confidence=0.8)) == {(2, 3): (1.0, 0.0), (3, 4): (0.0, 1.0)}


def test_with_features_adds_activation_values_and_all_pairs_adds_rows(small_study, tmp_path):
    import pyarrow.parquet as pq

    from fergi.features import image_table
    from fergi.preference import load_reaction_data

    plain, full = tmp_path / "plain", tmp_path / "full"
    assert _export(small_study, "--out", plain, "--format", "pickapic") == 0
    assert _export(small_study, "--out", full, "--format", "pickapic", "--all-pairs",
                   "--with-features") == 0
    a = pq.read_table(plain / "data").to_pandas()
    b = pq.read_table(full / "data").to_pandas()
    assert len(b) > len(a) and not [c for c in a.columns if "activation" in c]
    assert "AU12_activation_value_0" in b.columns and "AU4_activation_value_1" in b.columns
    data, _ = load_reaction_data(small_study)
    table = image_table(data.images, data.clips, data.invalid)
    salt = study_salt(small_study)
    keys = {f"{pseudonym(str(p), salt)}-s{s}-i{i}": v for p, s, i, v in
            zip(table["participant"], table["session"], table["image"],
                table["AU12_activation_value"], strict=True)}
    row = b.iloc[len(b) // 2]
    assert row["AU12_activation_value_0"] == pytest.approx(keys[row["image_0_uid"]])
    assert "12 AU activation values are included" in (full / "README.md").read_text()
