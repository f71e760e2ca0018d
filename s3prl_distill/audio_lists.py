"""Audio lists: s3prl's ``len_for_bucket`` CSVs and checks of the audio they list.

One CSV per data set, ``<bucket_dir>/<set>.csv``, with columns ``file_path`` (relative to the audio root) and
``length`` (in samples), as s3prl's pretraining and several downstream tasks read them. Used by the pretraining data
pipeline, the teacher cache and the SUPERB data preparation. Audio must be 16 kHz mono; all audio I/O goes through
``soundfile``.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import soundfile

from .atomic import atomic_file
from .errors import UserError
from .progress import progress as show_progress

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Receptive field, in samples, of the HuBERT / wav2vec 2.0 CNN front end that teachers and students share (kernel 10
# stride 5, then 3 stride 2 four times, then 2 stride 2 twice): 400 samples = 25 ms at 16 kHz. A shorter waveform gives
# no frame at all, and a batch holding only such files crashes the conv, so the header checks reject them.
MIN_SAMPLES = 400

# Allowed values of ``on_bad_file``.
ON_BAD_FILE = ("stop", "skip")
# How many bad files an error or warning lists before summarising the rest.
MAX_LISTED = 10
# s3prl's header: a leading unnamed index column (pandas' ``to_csv`` default), then the data columns.
CSV_HEADER = ("", "file_path", "length", "label")


class DataError(UserError, ValueError):
    """Bad data, with a message naming the file (and CSV) concerned."""


@dataclass(frozen=True)
class AudioItem:
    """One utterance of a data set.

    Attributes:
        path: absolute path of the audio file (audio root / the CSV's ``file_path``).
        length: number of samples, as the CSV states it.
    """

    path: Path
    length: int


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def check_on_bad_file(on_bad_file: str) -> None:
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {', '.join(map(repr, ON_BAD_FILE))}, got {on_bad_file!r}")


def _check_set_names(sets: Sequence[str]) -> List[str]:
    """The set names as a list; a bare string is refused because iterating it would give its characters."""
    if isinstance(sets, (str, bytes)):
        raise TypeError(f"sets must be a sequence of set names, not a single string ({sets!r}); use [{sets!r}]")
    return list(sets)


def _describe_bad_files(bad: Sequence[Tuple[Path, str]], total: int) -> str:
    """``N of M audio files are bad`` followed by the first few ``path: reason`` lines."""
    lines = [f"{len(bad)} of {total} audio files are bad:"]
    lines += [f"  {path}: {reason}" for path, reason in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)


def _too_short(frames: int) -> str:
    """Why a file of ``frames`` samples cannot be used (it is shorter than :data:`MIN_SAMPLES`)."""
    return (f"{frames} samples, shorter than the {MIN_SAMPLES}-sample ({1000 * MIN_SAMPLES // SAMPLE_RATE} ms) "
            "receptive field of the CNN")


def _probe(path: Path) -> Tuple[Optional[int], Optional[str]]:
    """Reads a file's header: ``(frames, None)`` for a usable 16 kHz mono file of at least :data:`MIN_SAMPLES`
    samples, else ``(None, reason)``."""
    if not path.is_file():
        return None, "file not found"
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, ValueError) as error:  # LibsndfileError is a RuntimeError
        return None, f"unreadable ({error})"
    if info.samplerate != SAMPLE_RATE:
        return None, f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz"
    if info.channels != 1:
        return None, f"{info.channels} channels, expected mono"
    if info.frames < MIN_SAMPLES:
        return None, _too_short(int(info.frames))
    return int(info.frames), None


def _handle_bad_files(bad: Sequence[Tuple[Path, str]], total: int, on_bad_file: str, context: str) -> None:
    """Raises (``stop``) or logs a warning (``skip``) about ``bad`` files; nothing when there are none.

    ``skip`` raises too when every one of the ``total`` files is bad: there would be nothing left to use.
    """
    if not bad:
        return
    message = f"{context}: {_describe_bad_files(bad, total)}"
    if on_bad_file == "stop":
        raise DataError(message + "\n(on_bad_file='skip' leaves them out instead)")
    if len(bad) >= total:
        raise DataError(f"{message}\nAll {total} audio files are bad: on_bad_file='skip' leaves none to use")
    logger.warning("%s\nSkipping them.", message)


# --------------------------------------------------------------------------------------------------------------------
# Length CSVs


def read_length_csvs(root: Path, bucket_dir: Path, sets: Sequence[str]) -> List[AudioItem]:
    """Reads ``<bucket_dir>/<set>.csv`` for each set, in order, and concatenates their items.

    Only the ``file_path`` and ``length`` columns are used (s3prl's index and ``label`` columns are ignored); each
    ``file_path`` is taken relative to ``root``. Raises DataError, naming the CSV, for a missing or empty CSV, a
    missing column, or a length that is not a positive integer (naming the row too).
    """
    root, bucket_dir = Path(root), Path(bucket_dir)
    names = _check_set_names(sets)
    if not names:
        raise ValueError("read_length_csvs needs at least one set name")
    items: List[AudioItem] = []
    for name in names:
        csv_path = bucket_dir / f"{name}.csv"
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: length CSV of set {name!r} not found")
        # utf-8-sig: tolerate a byte-order mark written by spreadsheet tools.
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames
            if not columns:
                raise DataError(f"{csv_path}: empty CSV (no header)")
            missing = [column for column in ("file_path", "length") if column not in columns]
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {','.join(columns)})")
            count = 0
            for row_number, row in enumerate(reader, start=1):
                where = f"{csv_path}: row {row_number} (line {reader.line_num})"
                file_path = (row.get("file_path") or "").strip()
                if not file_path:
                    raise DataError(f"{where}: empty file_path")
                raw_length = (row.get("length") or "").strip()
                try:
                    length = int(raw_length)
                except ValueError:
                    raise DataError(f"{where}: length {raw_length!r} is not an integer") from None
                if length <= 0:
                    raise DataError(f"{where}: length {length} is not positive")
                items.append(AudioItem(path=root / file_path, length=length))
                count += 1
        if count == 0:
            raise DataError(f"{csv_path}: empty CSV (header but no rows)")
        logger.info("Read %d items from %s", count, csv_path)
    return items


def check_audio_files(
    items: Sequence[AudioItem], on_bad_file: str = "stop", progress: bool = True, source: Optional[str] = None
) -> List[AudioItem]:
    """Checks every item's header: the file exists and reads, is 16 kHz mono, holds at least :data:`MIN_SAMPLES`
    samples and has the CSV's length.

    ``on_bad_file="stop"`` raises DataError with the number of bad files and the first few (path and reason);
    ``"skip"`` logs that as a warning and returns only the good items (in their original order), or raises DataError
    when no item is good. ``source`` (e.g. the sets and their CSV folder) is named in these messages.

    Only headers are read: non-finite samples in float files are found when :class:`CroppedAudioDataset` decodes them.
    """
    check_on_bad_file(on_bad_file)
    good: List[AudioItem] = []
    bad: List[Tuple[Path, str]] = []
    for item in show_progress(items, desc="Checking audio files", unit="file", disable=not progress):
        frames, reason = _probe(item.path)
        if reason is None and frames != item.length:
            reason = f"{frames} samples in the file, {item.length} in the CSV"
        if reason is None:
            good.append(item)
        else:
            bad.append((item.path, reason))
    context = "check_audio_files" if source is None else f"check_audio_files ({source})"
    _handle_bad_files(bad, len(items), on_bad_file, context)
    return good


def _normalise_extensions(extensions: Sequence[str]) -> Tuple[str, ...]:
    """Lower-case extensions with a leading dot."""
    if isinstance(extensions, str):
        extensions = [extensions]
    if not extensions:
        raise ValueError("extensions must name at least one file extension")
    # Compare case-insensitively so ".FLAC" files are found too.
    return tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)


def _audio_files(directory: Path, extensions: Tuple[str, ...]) -> List[Path]:
    """Audio files under ``directory``, recursively, in sorted (deterministic) order.

    Follows symlinked directories (data trees are often assembled from links) but visits each real directory once,
    so a link cycle cannot loop forever.
    """
    found: List[Path] = []
    seen = set()
    for current, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()  # os.walk visits subdirectories in this list's order
        for filename in sorted(filenames):
            if os.path.splitext(filename)[1].lower() in extensions:
                found.append(Path(current) / filename)
    return sorted(found)


def _direct_audio(directory: Path, extensions: Tuple[str, ...]) -> List[Path]:
    """Audio files directly in ``directory`` (not in its subdirectories), sorted."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def _discover_sets(audio_root: Path, extensions: Tuple[str, ...]) -> Dict[str, List[Path]]:
    """Every immediate subdirectory holding audio; else audio_root itself as one set named after its folder."""
    found: Dict[str, List[Path]] = {}
    for sub in sorted(p for p in audio_root.iterdir() if p.is_dir()):
        files = _audio_files(sub, extensions)
        if files:
            found[sub.name] = files
    direct = _direct_audio(audio_root, extensions)
    if found:
        if direct:
            logger.warning(
                "%s: ignoring %d audio file(s) directly in the root (e.g. %s); only subdirectories become sets",
                audio_root, len(direct), direct[0].name,
            )
        return found
    if direct:
        return {audio_root.resolve().name: _audio_files(audio_root, extensions)}
    raise DataError(f"{audio_root}: no audio files (extensions {', '.join(extensions)}) found")


def _write_csv_atomically(path: Path, rows: Sequence[Tuple[str, int, str]]) -> None:
    """Writes s3prl's CSV layout to a temporary file beside ``path``, then renames it over ``path``."""
    with atomic_file(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for index, (file_path, length, label) in enumerate(rows):
            writer.writerow((index, file_path, length, label))


def write_length_csvs(
    audio_root: Path,
    output_dir: Path,
    sets: Optional[Sequence[str]] = None,
    extensions: Sequence[str] = (".flac", ".wav"),
    on_bad_file: str = "stop",
    progress: bool = True,
) -> Dict[str, Path]:
    """Scans audio and writes one s3prl length CSV per set: the data-prep command's engine.

    Args:
        audio_root: folder that CSV paths are relative to (e.g. the ``LibriSpeech`` folder).
        output_dir: where ``<set>.csv`` files go (created if needed).
        sets: names of subdirectories of ``audio_root``; None takes every immediate subdirectory holding audio
            (recursively), or, when there is none but ``audio_root`` directly holds audio, one set named after
            ``audio_root``'s folder.
        extensions: file extensions counted as audio (case-insensitive).
        on_bad_file: ``"stop"`` raises DataError for unreadable, non-16 kHz-mono or too short (under
            :data:`MIN_SAMPLES` samples) files, ``"skip"`` leaves them out with a warning, but raises DataError for a
            set whose files are all bad.
        progress: show progress while reading headers (a bar on a terminal, log lines otherwise).

    Returns:
        ``{set name: CSV path}``. Rows are ``index,file_path,length,label`` (label = file stem), sorted by length
        descending, ties by path. All sets are scanned before any CSV is written, so a stop leaves no partial output.
    """
    audio_root, output_dir = Path(audio_root), Path(output_dir)
    check_on_bad_file(on_bad_file)
    exts = _normalise_extensions(extensions)
    if not audio_root.is_dir():
        raise DataError(f"{audio_root}: audio root is not a directory")

    if sets is None:
        files_by_set = _discover_sets(audio_root, exts)
    else:
        names = list(dict.fromkeys(_check_set_names(sets)))  # drop repeats, keep order
        if not names:
            raise ValueError("sets is empty; pass None to take every subdirectory holding audio")
        files_by_set = {}
        for name in names:
            # A set is one folder level below the root, so its CSV name is a plain file name.
            if not name or name in (".", "..") or "/" in name or os.sep in name:
                raise DataError(f"{name!r}: a set must be the name of a subdirectory of {audio_root}")
            set_dir = audio_root / name
            if not set_dir.is_dir():
                raise DataError(f"{set_dir}: set directory {name!r} does not exist")
            files = _audio_files(set_dir, exts)
            if not files:
                raise DataError(f"{set_dir}: set {name!r} holds no audio files ({', '.join(exts)})")
            files_by_set[name] = files

    rows_by_set: Dict[str, List[Tuple[str, int, str]]] = {}
    for name, files in files_by_set.items():
        rows: List[Tuple[str, int, str]] = []
        bad: List[Tuple[Path, str]] = []
        for path in show_progress(files, desc=f"Reading headers of {name}", unit="file", disable=not progress):
            frames, reason = _probe(path)
            if reason is not None:
                bad.append((path, reason))
                continue
            relative = path.relative_to(audio_root).as_posix()
            rows.append((relative, int(frames), path.stem))
        # Raises, in either mode, when no file of the set is usable (``files`` is never empty).
        _handle_bad_files(bad, len(files), on_bad_file, f"set {name!r} under {audio_root}")
        rows.sort(key=lambda row: (-row[1], row[0]))
        rows_by_set[name] = rows

    output_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    for name, rows in rows_by_set.items():
        csv_path = output_dir / f"{name}.csv"
        _write_csv_atomically(csv_path, rows)
        hours = sum(row[1] for row in rows) / SAMPLE_RATE / 3600
        logger.info("Wrote %s: %d files, %.2f hours", csv_path, len(rows), hours)
        written[name] = csv_path
    return written
