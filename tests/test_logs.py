"""The rate limit on repeated log lines (moorage/logs.py), on a real handler and logger."""

from __future__ import annotations

import io
import logging

from moorage.logs import RepeatLimiter


def _logger(clock: list[float]) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RepeatLimiter(handler, limit=3, interval=60, clock=lambda: clock[0]))
    logger = logging.getLogger("tests.logs.limited")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_a_repeated_line_is_let_through_limit_times_then_counted() -> None:
    clock = [0.0]
    logger, out = _logger(clock)
    for _ in range(1000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            logger.exception("cannot accept connections")
    logger.warning("another line")
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("ERROR") for line in lines) == 3
    assert lines[-1] == "WARNING tests.logs.limited another line"
    clock[0] = 61.0
    logger.warning("another line")
    text = out.getvalue()
    assert (
        "suppressed 997 repeats of a log line in 61 s: tests.logs.limited cannot accept connections"
    ) in text
    assert text.count("Traceback") == 3


def test_lines_that_differ_in_text_or_fields_are_not_repeats() -> None:
    clock = [0.0]
    logger, out = _logger(clock)
    for n in range(10):
        logger.info("upload %d", n)
        logger.info("request failed", extra={"path": f"/v2/{n}"})
    assert len(out.getvalue().splitlines()) == 20


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("moorage.test", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_text_lines_carry_fields_and_cannot_be_forged() -> None:
    from moorage.logs import TextFormatter

    line = TextFormatter().format(
        _record("GET %s", "/v2/x\n2026-01-01 ERROR forged", user="eve\r\nroot", bytes=12)
    )
    assert "\n" not in line and "\r" not in line
    assert "/v2/x\\n2026-01-01 ERROR forged" in line
    assert " user=eve\\r\\nroot " in line
    assert line.endswith("bytes=12")


def test_json_lines_are_one_object_each() -> None:
    import json

    from moorage.logs import JsonFormatter

    line = JsonFormatter().format(_record("GET %s", "/v2/x\ny", status=200, user="bob"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "GET /v2/x\ny"
    assert (entry["status"], entry["user"], entry["level"]) == (200, "bob", "info")
    assert entry["logger"] == "moorage.test" and entry["time"]
