"""Run folders and output files: checked before long work starts."""

import pytest

from lot_rl.errors import LoTUserError
from lot_rl.runlog import check_writable_file, ensure_writable_dir


def test_check_writable_file_leaves_no_trace_and_names_the_option(tmp_path):
    new = check_writable_file(tmp_path / "out.json", "--json")
    assert new == tmp_path / "out.json" and not new.exists()  # proved writable, not left behind
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"old")
    check_writable_file(kept, "--plot")
    assert kept.read_bytes() == b"old"  # an existing file is not touched
    with pytest.raises(LoTUserError, match="--out: .* is a folder"):
        check_writable_file(tmp_path, "--out")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(LoTUserError, match="--json: cannot write .*a_file/x.json"):
        check_writable_file(tmp_path / "a_file" / "x.json", "--json")


def test_ensure_writable_dir_creates_the_folder(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b", "--video").is_dir()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(LoTUserError, match="--video: cannot write to folder"):
        ensure_writable_dir(tmp_path / "a_file" / "videos", "--video")
