"""AuditHandler: log records become entries; no recursion, no deadlock, no wait past on_full."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import locked

from audit_engine import AuditEntry, AuditQueueFull, AuditService
from audit_engine.integrations.logging import AuditHandler

Attach = Callable[..., logging.Logger]
# The handler's import path for dictConfig; "audit_engine.AuditHandler" once the root exports it.
HANDLER_PATH = "audit_engine.integrations.logging.AuditHandler"


@pytest.fixture
def attach(prefix: str) -> Iterator[Attach]:
    """Attach a handler to a logger of this test's own; detached and closed afterwards."""
    attached: list[tuple[logging.Logger, AuditHandler]] = []

    def attach_to(handler: AuditHandler, name: str = "app") -> logging.Logger:
        logger = logging.getLogger(f"{prefix}.{name}" if name else prefix)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        attached.append((logger, handler))
        return logger

    yield attach_to
    for logger, handler in attached:
        logger.removeHandler(handler)
        handler.close()


# -- records with extra={"audit": ...} ---------------------------------------------------------


def test_a_record_with_an_audit_dict_becomes_an_entry_with_its_message(
    service: AuditService, attach: Attach, entries: Callable[[], list[AuditEntry]]
) -> None:
    log = attach(AuditHandler(service))
    log.info(
        "exported note %s",
        "n1",
        extra={"audit": {"action": "note.export", "actor": "alice", "resource_id": "n1"}},
    )
    log.info("saved", extra={"audit": {"action": "note.save", "details": {"size": 3}}})
    log.info("x", extra={"audit": {"action": "note.tag", "details": {"message": "own"}}})
    export, save, tag = entries()
    assert (export.action, export.actor, export.resource_id, export.outcome) == (
        "note.export",
        "alice",
        "n1",
        "success",
    )
    assert export.details == {"message": "exported note n1"}
    assert save.details == {"size": 3, "message": "saved"}
    assert tag.details == {"message": "own"}  # the dict's own message wins


def test_records_without_an_audit_dict_are_ignored(
    service: AuditService, attach: Attach, entries: Callable[[], list[AuditEntry]]
) -> None:
    log = attach(AuditHandler(service))
    log.error("something broke")
    log.info("hello", extra={"user": "alice"})
    assert entries() == []


def test_an_invalid_audit_dict_raises_to_the_logging_call(
    service: AuditService, attach: Attach, entries: Callable[[], list[AuditEntry]]
) -> None:
    log = attach(AuditHandler(service))
    with pytest.raises(ValueError, match="operation"):
        log.info("bad", extra={"audit": {"action": "note.export", "operation": "export"}})
    with pytest.raises(ValueError, match="details must be a JSON object"):
        log.info("bad", extra={"audit": {"action": "note.export", "details": "text"}})
    with pytest.raises(TypeError) as raised:
        log.info("bad", extra={"audit": "note.export"})
    assert str(raised.value) == (
        "a log record's extra={'audit': ...} must be a dict of record() fields, got str"
    )
    assert entries() == []


# -- records from chosen loggers ---------------------------------------------------------------


def test_records_from_chosen_loggers_and_their_children_become_entries(
    prefix: str, service: AuditService, attach: Attach, entries: Callable[[], list[AuditEntry]]
) -> None:
    name = f"{prefix}.shop.security"
    shop = attach(AuditHandler(service, loggers=[name]), "shop")
    security = logging.getLogger(name)
    security.info("alice signed in")
    logging.getLogger(f"{name}.tokens").warning("token %s renewed", "t-1")
    logging.getLogger(f"{name}x").info("not chosen: only a prefix")
    shop.info("not chosen: the parent")
    security.error("locked out")
    try:
        raise PermissionError("password=hunter2")
    except PermissionError:
        security.info("denied", exc_info=True)
    signed_in, renewed, locked_out, denied = entries()
    assert (signed_in.action, signed_in.outcome, signed_in.operation) == (
        name,
        "success",
        "execute",
    )
    assert signed_in.details == {"message": "alice signed in", "logger": name, "level": "INFO"}
    assert (renewed.action, renewed.outcome) == (f"{name}.tokens", "success")
    assert renewed.details["message"] == "token t-1 renewed"
    assert (locked_out.outcome, locked_out.details["level"]) == ("failure", "ERROR")
    assert denied.outcome == "failure"
    assert denied.details == {
        "message": "denied",
        "logger": name,
        "level": "INFO",
        "error": "PermissionError",
    }
    assert "hunter2" not in str(denied.model_dump())


def test_the_handler_level_and_filters_apply(
    prefix: str, service: AuditService, attach: Attach, entries: Callable[[], list[AuditEntry]]
) -> None:
    handler = AuditHandler(service, loggers=[f"{prefix}.app"], level="WARNING")
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    app = attach(handler)
    app.info("below the level")
    app.warning("a secret")
    app.warning("kept")
    assert [e.details["message"] for e in entries()] == ["kept"]


def test_a_loggers_record_that_cannot_be_recorded_is_reported_as_an_error(
    prefix: str,
    service: AuditService,
    attach: Attach,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = attach(AuditHandler(service, loggers=[f"{prefix}.app"]))
    service.close()
    # Reported even with logging's own error printing switched off, as in many deployments.
    monkeypatch.setattr(logging, "raiseExceptions", False)
    with caplog.at_level(logging.ERROR, logger="audit_engine.logging"):
        app.info("after close")  # does not raise into the application's logging call
    (report,) = caplog.records
    assert report.name == "audit_engine.logging"
    assert report.getMessage().startswith(f"could not record the log record of '{prefix}.app' (")
    assert report.exc_info is not None
    assert report.exc_info[0].__name__ == "AuditServiceClosed"


# -- never recursing, never deadlocking --------------------------------------------------------


def test_the_engine_s_own_loggers_are_never_audited(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    handler = AuditHandler(service, loggers=["audit_engine"])
    engine = logging.getLogger("audit_engine")
    engine.addHandler(handler)
    saved = engine.level
    engine.setLevel(logging.DEBUG)
    try:
        logging.getLogger("audit_engine.service").warning("audit queue full: dropped 1")
        engine.info("x", extra={"audit": {"action": "engine.log"}})
    finally:
        engine.removeHandler(handler)
        engine.setLevel(saved)
    assert entries() == []


def test_a_record_logged_inside_record_is_ignored_and_other_threads_are_not_held(
    prefix: str,
    service: AuditService,
    attach: Attach,
    entries: Callable[[], list[AuditEntry]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = attach(AuditHandler(service, loggers=[f"{prefix}.app"]))
    real_record = service.record
    other_done = threading.Event()

    def record_that_logs(*args: Any, **fields: Any) -> str | None:
        # What a redaction or policy that logs does: back into the same handler, same thread.
        app.info("logged from inside record()", extra={"audit": {"action": "nested"}})
        if fields.get("action") == "outer":
            # Another thread logging meanwhile is recorded, not blocked behind this one: the
            # handler's lock is not held here (OpenTelemetry #3193/#4585 deadlocked on it).
            other = threading.Thread(
                target=lambda: (
                    app.info("other", extra={"audit": {"action": "other"}}),
                    other_done.set(),
                )
            )
            other.start()
            other.join(10)
        return real_record(*args, **fields)

    monkeypatch.setattr(service, "record", record_that_logs)
    app.info("outer", extra={"audit": {"action": "outer"}})
    assert other_done.is_set()
    # "other" went through record_that_logs in its own thread: its nested record was ignored too.
    assert [e.action for e in entries()] == ["other", "outer"]


# -- a full queue: no longer than on_full allows -----------------------------------------------


def test_on_full_drop_returns_at_once_and_counts_the_drops(
    make_service: Callable[..., AuditService], db_path: Path, attach: Attach
) -> None:
    service = make_service(on_full="drop", queue_maxsize=5, buffer_max_size=1)
    log = attach(AuditHandler(service))
    with locked(db_path) as lock:
        started = time.monotonic()
        for n in range(20):
            log.info("fill", extra={"audit": {"action": "fill", "details": {"n": n}}})
        elapsed = time.monotonic() - started
        stats = service.stats()
        lock.release()
        assert service.flush(30)
    assert elapsed < 2  # the writer is stuck behind the lock: nothing here waited for it
    assert 5 <= stats.accepted <= 6  # the queue, plus the one entry the stuck writer holds
    assert stats.dropped == 20 - stats.accepted


def test_on_full_block_waits_at_most_block_timeout(
    prefix: str,
    make_service: Callable[..., AuditService],
    db_path: Path,
    attach: Attach,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(on_full="block", queue_maxsize=5, buffer_max_size=1, block_timeout=0.2)
    app = attach(AuditHandler(service, loggers=[f"{prefix}.app"]))
    with locked(db_path) as lock, caplog.at_level(logging.ERROR, logger="audit_engine.logging"):
        with pytest.raises(AuditQueueFull):  # noqa: PT012 - fills the queue first
            for _ in range(20):
                started = time.monotonic()
                app.info("fill", extra={"audit": {"action": "fill"}})
        waited = time.monotonic() - started
        # A record taken through loggers=: reported, not raised, after the same bounded wait.
        started = time.monotonic()
        app.info("a plain log record")
        waited_plain = time.monotonic() - started
        lock.release()
        assert service.flush(30)
    assert 0.2 <= waited < 2
    assert 0.2 <= waited_plain < 2
    (report,) = caplog.records
    assert report.exc_info is not None
    assert report.exc_info[0] is AuditQueueFull


# -- the handler's own service -----------------------------------------------------------------


def test_a_handler_with_settings_owns_its_service_and_close_drains_it(
    db_path: Path, attach: Attach, entries: Callable[[], list[AuditEntry]]
) -> None:
    handler = AuditHandler(database=db_path, buffer_flush_interval=3600)
    log = attach(handler)
    for n in range(3):
        log.info("saved", extra={"audit": {"action": "note.save", "details": {"n": n}}})
    assert handler.owns_service
    handler.close()  # not flushed before: close() itself drains (the interval is an hour)
    assert handler.service.closed
    assert [e.details["n"] for e in entries()] == [0, 1, 2]


def test_a_given_service_is_flushed_but_not_closed(
    make_service: Callable[..., AuditService],
    attach: Attach,
    entries: Callable[[], list[AuditEntry]],
) -> None:
    service = make_service(buffer_flush_interval=3600)
    handler = AuditHandler(service)
    attach(handler).info("saved", extra={"audit": {"action": "note.save"}})
    handler.flush()
    assert [e.action for e in entries()] == ["note.save"]
    handler.close()
    assert not service.closed
    assert not handler.owns_service


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"loggers": "app"},
            TypeError,
            "AuditHandler(loggers=...) takes a list of logger names, not one string ('app')",
        ),
        ({"loggers": ["app", ""]}, TypeError, "AuditHandler(loggers=...) names loggers: got ''"),
        (
            {"close_timeout": -1},
            ValueError,
            "AuditHandler(close_timeout=...) is seconds, a number >= 0, got -1",
        ),
        ({"queue_maxsize": "many"}, ValueError, "invalid setting queue_maxsize"),
    ],
)
def test_bad_arguments_name_what_is_wrong(
    db_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        AuditHandler(database=db_path, **kwargs)
    assert str(raised.value).startswith(message)


def test_a_service_and_settings_together_are_refused(service: AuditService) -> None:
    with pytest.raises(TypeError) as raised:
        AuditHandler(service, database="other.db")
    assert str(raised.value) == (
        "AuditHandler() takes a service or settings for a service of its own, not both "
        "(got service= and database)"
    )
    with pytest.raises(TypeError, match="must be an AuditService, got str"):
        AuditHandler("audit.db")  # type: ignore[arg-type]


# -- logging.config.dictConfig, in a fresh interpreter (it replaces the process's logging) -------


def _run(script: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_dict_config_builds_a_handler_that_owns_its_service_and_drains_at_exit(
    tmp_path: Path, db_path: Path, entries: Callable[[], list[AuditEntry]]
) -> None:
    # No close(), no flush(): logging.shutdown (and the engine's exit hook) drain at exit.
    _run(
        f"""
        import logging, logging.config
        logging.config.dictConfig({{
            "version": 1,
            "handlers": {{"audit": {{
                "()": "{HANDLER_PATH}",
                "database": {str(db_path)!r},
                "buffer_flush_interval": 3600,
                "loggers": ["shop.security"],
                "level": "INFO",
            }}}},
            "loggers": {{"shop": {{"handlers": ["audit"], "level": "DEBUG"}}}},
        }})
        logging.getLogger("shop.security").info("alice signed in")
        logging.getLogger("shop.security").debug("below the handler's level")
        logging.getLogger("shop").info("saved", extra={{"audit": {{"action": "note.save"}}}})
        """,
        tmp_path,
    )
    assert [(e.action, e.details["message"]) for e in entries()] == [
        ("shop.security", "alice signed in"),
        ("note.save", "saved"),
    ]


def test_dict_config_takes_the_application_s_service_by_ext_reference(
    tmp_path: Path, db_path: Path, entries: Callable[[], list[AuditEntry]]
) -> None:
    _run(
        f"""
        import logging, logging.config
        from audit_engine import AuditService
        audit = AuditService({str(db_path)!r})
        logging.config.dictConfig({{
            "version": 1,
            "handlers": {{"audit": {{"()": "{HANDLER_PATH}", "service": "ext://__main__.audit"}}}},
            "root": {{"handlers": ["audit"], "level": "INFO"}},
        }})
        handler = logging.getLogger().handlers[0]
        assert handler.service is audit and not handler.owns_service, handler
        logging.getLogger("app").info("x", extra={{"audit": {{"action": "note.export"}}}})
        audit.close()
        """,
        tmp_path,
    )
    assert [e.action for e in entries()] == ["note.export"]
