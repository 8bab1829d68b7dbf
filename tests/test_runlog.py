"""Run folders and output files: checked before long work starts; a resumed run's metrics start again after
its checkpoint's step."""

import json

import pytest

from lot_rl.errors import LoTUserError
from lot_rl.runlog import RunLogger, check_writable_file, drop_metrics_from, ensure_writable_dir, read_metrics


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


def test_resumed_logger_drops_rows_logged_after_the_checkpoint(tmp_path):
    logger = RunLogger(tmp_path)
    for step in (10, 20, 30, 40):
        logger.log(step, {"charts/SPS": step})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "charts/SPS"')  # the partial last line of a killed run
    # the run is resumed from a checkpoint taken at step 20: rows at 30 and later are logged again
    logger = RunLogger(tmp_path, purge_step=21)
    logger.log(30, {"charts/SPS": 31.0})
    logger.close()
    assert [(r["step"], r["charts/SPS"]) for r in read_metrics(tmp_path)] == [(10, 10.0), (20, 20.0), (30, 31.0)]


def test_drop_metrics_from_a_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 2)))
    drop_metrics_from(tmp_path, 2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    drop_metrics_from(tmp_path / "missing", 2)  # no metrics file yet: nothing to do
