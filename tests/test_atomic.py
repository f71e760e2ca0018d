"""Whole-or-absent text files (s3prl_distill.atomic): the SUPERB sweep's records and the length CSVs use them."""

import pytest

from s3prl_distill.atomic import atomic_file, write_text_atomically


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "done.json"
    path.write_text("old")
    write_text_atomically(path, '{"value": 1}')
    assert path.read_text() == '{"value": 1}'
    assert [entry.name for entry in tmp_path.iterdir()] == ["done.json"]  # no temporary file left


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_file(path) as handle:
            handle.write('{"half": ')
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["sweep.json"]
    fresh = tmp_path / "new.json"
    with pytest.raises(RuntimeError):
        with atomic_file(fresh) as handle:
            raise RuntimeError("killed")
    assert not fresh.exists()


def test_the_rename_is_flushed_after_the_data(tmp_path, monkeypatch):
    """The file's data, then the folder holding the rename, reach the disk: for the sweep records and checkpoints."""
    import os

    from s3prl_distill.checkpoint import save_checkpoint

    synced = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_text_atomically(tmp_path / "done.json", "{}")
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".done.json.")) and synced[1] == str(tmp_path)
    synced.clear()
    save_checkpoint({"Step": 1}, tmp_path / "run" / "states-1.ckpt")
    assert len(synced) == 2 and synced[1] == str(tmp_path / "run")


def test_a_folder_that_cannot_be_synced_is_left_alone(tmp_path):
    from s3prl_distill.atomic import sync_directory

    sync_directory(tmp_path / "missing")  # cannot be opened: nothing to flush, no error


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_new_file_gets_the_umask_permissions_not_the_temporary_files(tmp_path, umask, mode):
    import os

    previous = os.umask(umask)
    try:
        write_text_atomically(tmp_path / "results.json", "{}")
        with atomic_file(tmp_path / "weights.bin", binary=True) as handle:
            handle.write(b"\0")
    finally:
        os.umask(previous)
    assert [(tmp_path / name).stat().st_mode & 0o777 for name in ("results.json", "weights.bin")] == [mode, mode]
