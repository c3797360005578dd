"""Where the probe images come from: a listing of images in a fixed order, read in units.

Sources (``--probe``):

- a folder (searched recursively, sorted) or a file listing image paths: one image per file;
- ``parquet:PATH_OR_GLOB``: Parquet shards with a column of encoded image bytes (``--probe-column``,
  default ``image``; a binary column, or a struct with a ``bytes`` field as Hugging Face datasets
  store images);
- ``tar:PATH_OR_GLOB``: WebDataset-style tar shards (uncompressed); every member whose name ends in
  an image suffix is one image, the other members (``.json``, ``.cls``, ...) are ignored.

The image order, which gives every image its listing index and so its tie rank (docs/architecture.md
section 4.2): for files, the listing's order; for shards, the shards sorted by path, then the rows
(Parquet) or the members (tar) in the order the shard stores them. Listing reads only metadata (a
Parquet footer, the tar headers); images are read from the shards where they lie, never unpacked to
disk. A unit is a run of consecutive images read together (256 files, a Parquet row group, 256 tar
members read by their offsets): the local engine reads the units in turn, the Ray engine hands one
unit to an actor per task.

A shard whose metadata cannot be read is skipped and listed (its images cannot be counted); more than
1% of the shards so is refused, as more than 1% of unreadable images is (``probe_set.MAX_FAILED_FRACTION``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from textcam.errors import TextcamError, first_line
from textcam.runtime.images import IMAGE_SUFFIXES

UNIT_IMAGES = 256
SOURCE_KINDS = ("parquet", "tar")
MAX_FAILED_SHARD_FRACTION = 0.01


@dataclass(frozen=True)
class Unit:
    """Images ``first .. first + count - 1`` of the listing, read together."""

    kind: str  # "files", "parquet" or "tar"
    first: int
    count: int
    shard: str = ""
    row_group: int = -1
    start: int = 0  # the position of the unit's first image in its shard, for labels
    paths: tuple[str, ...] = ()
    members: tuple[tuple[str, int, int], ...] = ()  # tar: (name, data offset, size)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Unit:
        found = json.loads(text)
        found["paths"] = tuple(found["paths"])
        found["members"] = tuple(tuple(m) for m in found["members"])
        return Unit(**found)


@dataclass
class ProbeSet:
    kind: str
    source: str
    units: list[Unit]
    count: int
    column: str = "image"
    shard_stats: list[tuple[str, int, int, int]] = field(default_factory=list)
    """Shards only: (absolute path, size, mtime_ns, images) each, for the checkpoint fingerprint."""
    failed_shards: list[tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def from_paths(paths: list[Path], source: str = "") -> ProbeSet:
        units = [Unit("files", start, len(chunk), paths=tuple(str(p) for p in chunk))
                 for start in range(0, len(paths), UNIT_IMAGES) for chunk in [paths[start : start + UNIT_IMAGES]]]
        return ProbeSet("files", source, units, len(paths))

    @property
    def paths(self) -> list[Path]:
        """The listed files (a files source only)."""
        return [Path(p) for unit in self.units for p in unit.paths]

    def fingerprint(self) -> str:
        """What the checkpoint header binds to: per file or per shard, its path, size and mtime."""
        if self.kind == "files":
            from textcam.semantics_store.build_checkpoint import probe_fingerprint

            return probe_fingerprint(self.paths)
        digest = hashlib.sha256(f"{self.kind}\0{self.column}\n".encode())
        for path, size, mtime, images in self.shard_stats:
            digest.update(os.fsencode(path) + f"\0{size}\0{mtime}\0{images}\n".encode())
        return digest.hexdigest()

    def iter_images(self, wanted: Iterable[int] | None = None) -> Iterator[tuple[int, str, bytes | None, str | None]]:
        """(listing index, label, bytes, error) per image in listing order; only ``wanted`` (sorted) if given.

        Files come with bytes None (``load_image`` reads them, with its own messages); shard members
        with their bytes, or an error naming why they could not be read."""
        if wanted is None:
            for unit in self.units:
                yield from read_unit(unit, self.column)
            return
        for unit, share in self.units_with(list(wanted)):
            yield from read_unit(unit, self.column, set(share))

    def units_with(self, wanted: list[int]) -> list[tuple[Unit, list[int]]]:
        """The units holding any of ``wanted`` (sorted listing indices), each with its share."""
        found, position = [], 0
        for unit in self.units:
            stop = position
            while stop < len(wanted) and wanted[stop] < unit.first + unit.count:
                stop += 1
            if stop > position:
                found.append((unit, wanted[position:stop]))
            position = stop
        return found


def open_probe(spec: str | Path, column: str = "image") -> ProbeSet:
    """``--probe``: a folder, a list file, ``parquet:PATH_OR_GLOB`` or ``tar:PATH_OR_GLOB``."""
    from textcam.semantics_store.probe_set import list_probe_images

    text = str(spec)
    kind, _, pattern = text.partition(":")
    if kind not in SOURCE_KINDS or not pattern:
        return ProbeSet.from_paths(list_probe_images(spec), text)
    shards = _expand(pattern, kind)
    units: list[Unit] = []
    stats: list[tuple[str, int, int, int]] = []
    failed: list[tuple[str, str]] = []
    first = 0
    for shard in shards:
        try:
            found = _parquet_units(shard, column, first) if kind == "parquet" else _tar_units(shard, first)
        except TextcamError:
            raise
        except Exception as exc:  # a damaged shard makes pyarrow and tarfile raise many types
            failed.append((str(shard), f"{shard}: cannot read the shard ({type(exc).__name__}: {first_line(exc)})"))
            continue
        images = sum(u.count for u in found)
        stat = shard.stat()
        stats.append((str(shard.resolve()), stat.st_size, stat.st_mtime_ns, images))
        units.extend(found)
        first += images
    if len(failed) > MAX_FAILED_SHARD_FRACTION * len(shards):
        raise TextcamError(f"--probe {text}: {len(failed)} of {len(shards)} shards could not be read (more than 1%), "
                           f"e.g. {failed[0][1]}")
    if not first:
        what = f"column {column!r}" if kind == "parquet" else ", ".join(sorted(IMAGE_SUFFIXES))
        raise TextcamError(f"--probe {text}: the shards hold no images ({what})")
    return ProbeSet(kind, text, units, first, column, stats, failed)


def _expand(pattern: str, kind: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        shards = sorted(p for p in path.rglob(f"*.{kind}") if p.is_file())
    else:
        shards = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not shards:
        raise TextcamError(f"--probe {kind}:{pattern}: no {kind} shards found")
    return shards


def _parquet_units(shard: Path, column: str, first: int) -> list[Unit]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(shard) as handle:
        names = handle.schema_arrow.names
        if column not in names:
            raise TextcamError(f"--probe {shard}: no column {column!r} (columns: {', '.join(names[:12])}); "
                               "name the image column with --probe-column")
        units, start = [], 0
        for group in range(handle.metadata.num_row_groups):
            rows = handle.metadata.row_group(group).num_rows
            if rows:
                units.append(Unit("parquet", first, rows, shard=str(shard), row_group=group, start=start))
                first += rows
                start += rows
    return units


def _tar_units(shard: Path, first: int) -> list[Unit]:
    # the headers only: tarfile seeks over each member's data in an uncompressed tar
    with tarfile.open(shard, "r:") as archive:
        members = [(m.name, m.offset_data, m.size) for m in archive.getmembers()
                   if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES]
    return [Unit("tar", first + start, len(chunk), shard=str(shard), start=start, members=tuple(chunk))
            for start in range(0, len(members), UNIT_IMAGES) for chunk in [members[start : start + UNIT_IMAGES]]]


def read_unit(unit: Unit, column: str = "image", wanted: set[int] | None = None
              ) -> Iterator[tuple[int, str, bytes | None, str | None]]:
    """The images of one unit as (listing index, label, bytes, error); only ``wanted`` ones if given."""
    indices = range(unit.first, unit.first + unit.count)
    if unit.kind == "files":
        for index, path in zip(indices, unit.paths, strict=True):
            if wanted is None or index in wanted:
                yield index, path, None, None
        return
    if unit.kind == "tar":
        try:
            handle = open(unit.shard, "rb")  # noqa: SIM115 (closed below; a failure here fails every member)
        except OSError as exc:
            yield from _all_failed(unit, wanted, f"{unit.shard}: cannot read the shard ({exc.strerror or exc})")
            return
        with handle:
            for index, (name, offset, size) in zip(indices, unit.members, strict=True):
                if wanted is not None and index not in wanted:
                    continue
                label = f"{unit.shard}#{name}"
                try:
                    handle.seek(offset)
                    data = handle.read(size)
                except OSError as exc:
                    yield index, label, None, f"{label}: cannot read ({exc.strerror or exc})"
                    continue
                if len(data) != size:
                    yield index, label, None, f"{label}: the shard ends inside this member"
                else:
                    yield index, label, data, None
        return
    try:
        values = _parquet_column(unit, column)
    except Exception as exc:  # a damaged row group: every image in it is unreadable
        message = f"{unit.shard}: cannot read row group {unit.row_group} ({type(exc).__name__}: {first_line(exc)})"
        yield from _all_failed(unit, wanted, message)
        return
    for index, value in zip(indices, values, strict=True):
        if wanted is not None and index not in wanted:
            continue
        label = f"{unit.shard}#{index - unit.first + unit.start}"
        if isinstance(value, dict):
            value = value.get("bytes")
        if not isinstance(value, bytes | bytearray):
            yield index, label, None, f"{label}: column {column!r} holds no image bytes ({type(value).__name__})"
        else:
            yield index, label, bytes(value), None


def _all_failed(unit: Unit, wanted: set[int] | None, message: str):
    for index in range(unit.first, unit.first + unit.count):
        if wanted is None or index in wanted:
            yield index, f"{unit.shard}#{index - unit.first + unit.start}", None, message


def _parquet_column(unit: Unit, column: str) -> list:
    import pyarrow.parquet as pq

    with pq.ParquetFile(unit.shard) as handle:
        return handle.read_row_group(unit.row_group, columns=[column]).column(column).to_pylist()

