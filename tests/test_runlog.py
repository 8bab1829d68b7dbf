"""Run folders: a resumed run's metrics start again after its checkpoint's step."""

import json

from lot_rl.runlog import RunLogger, drop_metrics_from, read_metrics


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
