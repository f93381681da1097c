"""One writer per format (Pick-a-Pic parquet, HF ``datasets``, HPD v2, JSON lines), sharded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from fergi.preference.export._rows import _arrow_schema, _Context


def split_name(source: str | None) -> str:
    """The split a label source is written to: ``train``, or ``train_<source>`` per source."""
    return "train" if source is None else f"train_{source}"


class _Writer:
    """Receives row chunks as they come and writes them shard by shard, split by split.

    With ``split_by_source`` every label source gets its own split (``train_reactions``,
    ``train_integrated``, ``train_ranking``): trainers read one split and ignore
    ``label_source``, so the sources, which may contradict each other on the same pair,
    never share one.
    """

    def __init__(self, out: Path, ctx: _Context, shard_size: int, with_features: bool,
                 split_by_source: bool = False):
        self.out, self.ctx, self.shard_size, self.with_features = out, ctx, shard_size, with_features
        self.split_by_source = split_by_source
        self.buffers: dict[str, list[pd.DataFrame]] = {}
        self.buffered: dict[str, int] = {}
        self.shards: dict[str, list[Path]] = {}
        self.n_rows = 0

    @property
    def n_shards(self) -> int:
        return sum(len(v) for v in self.shards.values())

    def add(self, rows: pd.DataFrame) -> None:
        if not self.split_by_source:
            self._add(split_name(None), rows)
            return
        sources = rows["label_source"].to_numpy()
        for source in pd.unique(sources):
            self._add(split_name(str(source)), rows[sources == source].reset_index(drop=True))

    def _add(self, split: str, rows: pd.DataFrame) -> None:
        buffer = self.buffers.setdefault(split, [])
        self.shards.setdefault(split, [])
        buffer.append(rows)
        self.buffered[split] = self.buffered.get(split, 0) + len(rows)
        while self.buffered[split] >= self.shard_size:
            whole = pd.concat(self.buffers[split], ignore_index=True)
            self._flush(split, whole.iloc[:self.shard_size].reset_index(drop=True))
            rest = whole.iloc[self.shard_size:].reset_index(drop=True)
            self.buffers[split], self.buffered[split] = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        for split in list(self.buffers):
            if self.buffered[split]:
                self._flush(split, pd.concat(self.buffers[split], ignore_index=True))
                self.buffers[split], self.buffered[split] = [], 0
        self._finish()

    def _image(self, rows: pd.DataFrame, which: str) -> list[bytes]:
        column = "_image_a" if which == "0" else "_image_b"
        return [self.ctx.images.jpeg(p, s, i) for p, s, i in
                zip(rows["_participant"], rows["session"], rows[column], strict=True)]

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _name_shards(self, folder: Path, suffix: str) -> None:
        # Hugging Face's naming: load_dataset(OUT) finds each split by it
        # (data/{split}-XXXXX-of-YYYYY.parquet).
        for split, shards in self.shards.items():
            n = len(shards)
            for k, path in enumerate(shards):
                path.rename(folder / f"{split}-{k:05d}-of-{n:05d}{suffix}")


class _PickapicWriter(_Writer):
    def __init__(self, *args):
        super().__init__(*args)
        (self.out / "data").mkdir()

    def _table(self, rows: pd.DataFrame):
        import pyarrow as pa

        schema = _arrow_schema(self.with_features)
        columns = {name: rows[name] for name in schema.names if name not in ("jpg_0", "jpg_1")}
        columns["jpg_0"] = self._image(rows, "0")
        columns["jpg_1"] = self._image(rows, "1")
        arrays = [pa.array(columns[f.name], type=f.type, from_pandas=True) for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        import pyarrow.parquet as pq

        path = self.out / "data" / f".shard-{split}-{len(self.shards[split]):05d}.parquet"
        pq.write_table(self._table(rows), path, row_group_size=min(len(rows), 1024))
        self.shards[split].append(path)
        self.n_rows += len(rows)

    def _finish(self) -> None:
        self._name_shards(self.out / "data", ".parquet")


class _HFWriter(_PickapicWriter):
    """Parquet shards first (streamed), then one ``datasets`` conversion with Image features."""

    def _finish(self) -> None:
        import datasets

        features = datasets.Features({
            f.name: (datasets.Image() if f.name in ("jpg_0", "jpg_1") else datasets.Value(str(f.type)))
            for f in _arrow_schema(self.with_features)})
        cache = self.out / ".cache"

        def gen(files):
            import pyarrow.parquet as pq

            for file in files:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
                    for row in batch.to_pylist():
                        row["jpg_0"] = {"bytes": row["jpg_0"], "path": None}
                        row["jpg_1"] = {"bytes": row["jpg_1"], "path": None}
                        yield row

        datasets.disable_progress_bars()
        try:
            splits = {
                split: datasets.Dataset.from_generator(
                    gen, features=features, cache_dir=str(cache),
                    gen_kwargs={"files": [str(p) for p in shards]}, writer_batch_size=256)
                for split, shards in self.shards.items() if shards}
            datasets.DatasetDict(splits).save_to_disk(str(self.out), max_shard_size="500MB")
            del splits
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(self.out / "data", ignore_errors=True)


class _HPDWriter(_Writer):
    """``train.json`` (a list, written entry by entry) and the images in ``train/``.

    Each entry is ``{prompt, file_path: [a, b], human_preference: [1, 0] | [0, 1]}`` with
    ``file_path`` relative to ``train/``: HPSv2's ``HPDDataset`` (hpsv2/src/training/
    data.py) joins ``file_path`` to ``--train-folder`` (the ``train/`` folder), and its
    bare ``except:`` retries the next item on a missing file instead of failing, so a
    wrong path would silently train on nothing. Per-source splits are
    ``train_<source>.json``, their images shared in ``train/``.
    """

    def __init__(self, *args):
        super().__init__(*args)
        (self.out / "train").mkdir()
        self.handles: dict = {}
        self.written: dict[str, int] = {}
        self.copied: set = set()

    def _handle(self, split: str):
        handle = self.handles.get(split)
        if handle is None:
            handle = self.handles[split] = (self.out / f"{split}.json").open("w")
            handle.write("[")
        return handle

    def _copy(self, participant, session, image, uid) -> str:
        source = self.ctx.images.require(participant, session, image)
        name = f"{uid}{source.suffix.lower()}"
        if uid not in self.copied:
            shutil.copyfile(source, self.out / "train" / name)
            self.copied.add(uid)
        return name

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        handle = self._handle(split)
        feats = [c for c in rows.columns if c.endswith("_activation_value_0")]
        for row in rows.to_dict("records"):
            entry = {
                "prompt": row["caption"],
                "file_path": [self._copy(row["_participant"], row["session"], row["_image_a"],
                                         row["image_0_uid"]),
                              self._copy(row["_participant"], row["session"], row["_image_b"],
                                         row["image_1_uid"])],
                # HPD v2 writes [1, 0] / [0, 1]; a tie stays [0.5, 0.5] (HPSv2's HPSLoss
                # weighs the two cross-entropies by these labels: a tie is read as one).
                "human_preference": [_label(row["label_0"]), _label(row["label_1"])],
                "label_source": row["label_source"],
                "confidence": _finite(row["confidence"]),
                "participant": row["participant"], "session": int(row["session"]),
            }
            if feats:
                entry["features"] = [
                    {c[:-2]: _finite(row[c]) for c in feats},
                    {c[:-2]: _finite(row[c[:-1] + "1"]) for c in feats}]
            handle.write(("\n" if not self.written.get(split) else ",\n") + json.dumps(entry))
            self.written[split] = self.written.get(split, 0) + 1
            self.n_rows += 1
        self.shards[split] = [self.out / f"{split}.json"]

    def _finish(self) -> None:
        for handle in self.handles.values():
            handle.write("\n]\n")
            handle.close()

    def abort(self) -> None:
        for handle in self.handles.values():
            handle.close()


class _JsonlWriter(_Writer):
    """``labels.jsonl``: the format of ``fergi annotate``, with pseudonymised participants."""

    def __init__(self, *args):
        super().__init__(*args)
        self.handle = (self.out / "labels.jsonl").open("w")

    def _flush(self, split: str, rows: pd.DataFrame) -> None:
        feats = [c for c in rows.columns if c.endswith("_activation_value_0")]
        for row in rows.to_dict("records"):
            label_0 = row["label_0"]
            preferred = (int(row["_image_a"]) if label_0 == 1.0 else
                         int(row["_image_b"]) if label_0 == 0.0 else None)
            norm = row["_normalization"]
            record = {
                "participant": row["participant"], "session": int(row["session"]),
                "image_a": int(row["_image_a"]), "image_b": int(row["_image_b"]),
                "preferred": preferred, "score_difference": _finite(row["_score_difference"]),
                "above_threshold": bool(row["_confident"]), "label_source": row["label_source"],
                "normalization": None if norm is None or pd.isna(norm) else str(norm),
                "confidence": _finite(row["confidence"]),
            }
            if feats:
                record["features_a"] = {c[:-2]: _finite(row[c]) for c in feats}
                record["features_b"] = {c[:-2]: _finite(row[c[:-1] + "1"]) for c in feats}
            self.handle.write(json.dumps(record, allow_nan=False) + "\n")
            self.n_rows += 1

    def _finish(self) -> None:
        self.handle.close()

    def abort(self) -> None:
        self.handle.close()


WRITERS = {"pickapic": _PickapicWriter, "hf": _HFWriter, "hpdv2": _HPDWriter,
           "jsonl": _JsonlWriter}


def _label(value: float) -> int | float:
    return int(value) if value in (0.0, 1.0) else float(value)


def _finite(value) -> float | None:
    value = float(value)
    return round(value, 10) if np.isfinite(value) else None
