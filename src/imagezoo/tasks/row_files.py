"""Result rows on disk for the Ray commands: a journal while a run goes, then one Parquet or
JSON Lines file, with every input in it exactly once.

While a run goes, each batch of rows that comes back is appended to a journal beside the
output, ``OUT.partial`` (an Arrow IPC stream, one record batch per write): a run that is
killed leaves every batch it wrote readable, and a torn last batch is simply not read. Rows
are keyed by their ``path``: a batch that comes back twice (a retried task) adds nothing
the second time. At the end the journal becomes ``OUT`` through a temporary file in the same
folder and ``os.replace``, and the journal is removed.

``resume`` keeps the rows of ``OUT`` (a finished run, to which inputs were added) and of the
journal (a run that was stopped), and the new run skips their inputs; resuming with other
settings (model, top-k, layers: the ``settings`` recorded in the schema) is refused.

Needs pyarrow (which ``imagezoo[ray]`` brings); no Ray and no PyTorch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ImagezooError
from ..fileio import atomic_path

FORMATS = {".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
SETTINGS_KEY = b"imagezoo.settings"
JSON_CHUNK = 10_000


def output_format(out: str | os.PathLike) -> str:
    """``parquet`` or ``jsonl``, from the file's extension."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ImagezooError(f"{out}: the output must end in .parquet or .jsonl "
                            f"(Parquet or JSON Lines)")
    return FORMATS[suffix]


def journal_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def with_settings(schema: pa.Schema, settings: dict) -> pa.Schema:
    """The schema with the run's settings in its metadata (compared on ``--resume``)."""
    metadata = dict(schema.metadata or {})
    metadata[SETTINGS_KEY] = json.dumps(settings, sort_keys=True).encode()
    return schema.with_metadata(metadata)


def read_rows(path: str | os.PathLike, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The rows of a finished output file, in batches of ``schema``; a Parquet file written
    with other settings or columns is refused."""
    path = Path(path)
    if output_format(path) == "parquet":
        try:
            source = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise ImagezooError(f"{path}: cannot read it as Parquet ({error})") from None
        _check_same(path, source.schema_arrow, schema)
        for batch in source.iter_batches():
            yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        return
    with open(path, encoding="utf-8") as lines:
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ImagezooError(f"{path}:{number}: not a JSON line ({error})") from None
            if len(records) == JSON_CHUNK:
                yield _batch_of(records, schema, path)
                records = []
        if records:
            yield _batch_of(records, schema, path)


def _batch_of(records: list[dict], schema: pa.Schema, path: Path) -> pa.RecordBatch:
    missing = [name for name in schema.names if name not in records[0]]
    if missing:
        raise ImagezooError(f"{path}: written with other settings (no {', '.join(missing)} "
                            f"column); --resume needs the command that wrote it")
    return pa.RecordBatch.from_pylist(records, schema=schema)


def read_journal(path: str | os.PathLike, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The complete batches of a journal; what a killed writer left half-written is dropped."""
    with pa.OSFile(str(path), "rb") as source:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError, EOFError):
            return   # stopped before its header was written
        _check_same(Path(path), reader.schema, schema)
        while True:
            try:
                yield reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError, EOFError):
                return   # the torn tail: everything before it is kept


def _check_same(path: Path, found: pa.Schema, wanted: pa.Schema) -> None:
    found_settings = (found.metadata or {}).get(SETTINGS_KEY)
    wanted_settings = (wanted.metadata or {}).get(SETTINGS_KEY)
    if found.remove_metadata() != wanted.remove_metadata() or (
            found_settings is not None and found_settings != wanted_settings):
        detail = found_settings.decode() if found_settings else ", ".join(found.names)
        raise ImagezooError(f"{path}: written with other settings ({detail}); --resume needs "
                            f"the same model and options, or another --out")


class RowJournal:
    """Appends batches of rows to ``OUT.partial``, each input once; ``finish`` writes ``OUT``.

    ``inputs`` counts the inputs written (kept ones included) and ``failures`` lists the
    ``(path, error)`` of those that failed, in the order they were written."""

    def __init__(self, out: str | os.PathLike, schema: pa.Schema, resume: bool = False):
        self.out = Path(out)
        self.format = output_format(self.out)
        self.schema = schema
        self.journal = journal_path(self.out)
        self.seen: set[str] = set()
        self.failures: list[tuple[str, str]] = []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # The kept rows go into a new journal first, which then replaces the old one: a run
        # stopped at any moment leaves a journal holding everything done so far.
        fresh = self.journal.with_name(self.journal.name + ".new")
        self._file = pa.OSFile(str(fresh), "wb")
        self._writer = pa.ipc.new_stream(self._file, schema)
        try:
            if resume and self.out.exists():
                for batch in read_rows(self.out, schema):
                    self.add(batch)
            if resume and self.journal.exists():
                for batch in read_journal(self.journal, schema):
                    self.add(batch)
        except BaseException:
            self.close()
            fresh.unlink(missing_ok=True)
            raise
        self.kept = len(self.seen)
        os.replace(fresh, self.journal)

    @property
    def done(self) -> set[str]:
        """The paths whose rows are written."""
        return self.seen

    @property
    def inputs(self) -> int:
        return len(self.seen)

    def add(self, rows: pa.Table | pa.RecordBatch) -> int:
        """Write the rows of inputs not written yet (a retried batch adds nothing); returns
        how many new inputs they held."""
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if rows.num_rows == 0:
            return 0
        rows = rows.select(self.schema.names).cast(self.schema)
        paths = rows.column("path").to_pylist()
        new = {path for path in paths if path not in self.seen}
        if not new:
            return 0
        if len(new) < len(set(paths)):
            rows = rows.filter(pa.array([path in new for path in paths]))
        for path, error in zip(rows.column("path").to_pylist(), rows.column("error").to_pylist()):
            if error is not None:   # an input that failed has this one row
                self.failures.append((path, error))
        self.seen |= new
        # One record batch per write: a reader of a torn journal gets whole inputs only.
        for batch in rows.combine_chunks().to_batches(max_chunksize=rows.num_rows):
            self._writer.write_batch(batch)
        self._file.flush()
        return len(new)

    def close(self) -> None:
        if not self._file.closed:
            self._writer.close()
            self._file.close()

    def finish(self) -> Path:
        """Write ``OUT`` from the journal (atomically) and remove the journal."""
        self.close()
        with atomic_path(self.out) as temporary:
            write_rows(temporary, self.format, self.schema, read_journal(self.journal, self.schema))
        self.journal.unlink(missing_ok=True)
        return self.out

    def __enter__(self) -> "RowJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_rows(path: Path, fmt: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
    if fmt == "parquet":
        with pq.ParquetWriter(str(path), schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        return
    with open(path, "w", encoding="utf-8") as lines:
        for batch in batches:
            for record in batch.to_pylist():
                lines.write(json.dumps(record) + "\n")
