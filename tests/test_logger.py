"""Console progress: a bar on a terminal, plain periodic status lines in batch logs."""

from dreamer_rodent.logger import Progress


def test_plain_status_lines_when_not_a_terminal(capsys):
    # Under pytest's capture stderr is not a terminal, as in a batch job's log.
    progress = Progress(total=1000, initial=100, enabled=True, plain_every=0.0)
    progress.update(400, **{"return": 3.25, "success": 0.5})
    progress.close()
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 400/1000 (40%)")
    assert "steps/s" in line and "ETA" in line
    assert "return 3.25" in line and "success 0.5" in line


def test_plain_status_lines_are_throttled_and_can_be_disabled(capsys):
    progress = Progress(total=1000, enabled=True, plain_every=3600.0)
    for step in range(10, 100, 10):
        progress.update(step)
    Progress(total=1000, enabled=False, plain_every=0.0).update(500)
    assert capsys.readouterr().out == ""


def test_a_logger_whose_tensorboard_writer_fails_closes_its_metrics_file(tmp_path, monkeypatch):
    import builtins

    import pytest
    import tensorboardX

    from dreamer_rodent import logger as logger_module

    opened = []

    def spy_open(*args, **kwargs):
        opened.append(builtins.open(*args, **kwargs))
        return opened[-1]

    def failing_writer(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(logger_module, "open", spy_open, raising=False)
    monkeypatch.setattr(tensorboardX, "SummaryWriter", failing_writer)
    with pytest.raises(OSError, match="Too many open files"):
        logger_module.Logger(tmp_path)
    assert len(opened) == 1 and opened[0].closed
