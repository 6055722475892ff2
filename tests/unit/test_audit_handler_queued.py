"""AuditHandler behind QueueHandler/QueueListener, messages that do not format, the writer thread.

QueueHandler.prepare() formats the traceback into the message and drops exc_info: the handler
must still never store the exception's message, and still mark the record a failure.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_engine import AuditEntry, AuditService, AuditServiceClosed, AuditStore
from audit_engine.integrations.logging import AuditHandler
from audit_engine.models import SignedCheckpoint
from audit_engine.storage import keys

SECRET = "hunter2"


class SignInRefused(Exception):
    pass


@pytest.fixture
def queued(
    service: AuditService, request: pytest.FixtureRequest
) -> Iterator[tuple[logging.Logger, logging.handlers.QueueListener]]:
    """A logger of the test's own -> QueueHandler -> QueueListener -> AuditHandler(loggers=)."""
    name = f"{request.node.name}.security"
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    handler = AuditHandler(service, loggers=[name])
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    log = logging.getLogger(name)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    queue_handler = logging.handlers.QueueHandler(records)
    log.addHandler(queue_handler)
    try:
        yield log, listener
    finally:
        log.removeHandler(queue_handler)
        if listener._thread is not None:  # not stopped by the test
            listener.stop()
        handler.close()


def _log_and_drain(
    queued: tuple[logging.Logger, logging.handlers.QueueListener], raise_it: Callable[[], None]
) -> None:
    log, listener = queued
    try:
        raise_it()
    except Exception:
        log.warning("sign-in refused", exc_info=True)
    listener.stop()  # joins: every queued record has been handled


def _raise_plain() -> None:
    raise PermissionError(f"password {SECRET} rejected for alice")


def _raise_chained_from_a_never_raised_cause() -> None:
    # The cause has no traceback: its "ValueError: ..." line comes before any header.
    raise SignInRefused("refused") from ValueError(f"password {SECRET}")


def _raise_while_handling() -> None:
    try:
        raise KeyError(SECRET)
    except KeyError:
        raise SignInRefused(f"multi\nline {SECRET}") from None


def _raise_group() -> None:
    raise ExceptionGroup("sign-in", [ValueError(SECRET)])


@pytest.mark.parametrize(
    ("raise_it", "error"),
    [
        (_raise_plain, "PermissionError"),
        (_raise_chained_from_a_never_raised_cause, "SignInRefused"),
        (_raise_while_handling, "SignInRefused"),
        (_raise_group, "ExceptionGroup"),
    ],
    ids=["plain", "cause-without-traceback", "suppressed-context", "group"],
)
def test_behind_a_queue_handler_the_exception_message_never_reaches_the_trail(
    queued: tuple[logging.Logger, logging.handlers.QueueListener],
    entries: Callable[[], list[AuditEntry]],
    raise_it: Callable[[], None],
    error: str,
) -> None:
    _log_and_drain(queued, raise_it)
    (entry,) = entries()
    assert SECRET not in entry.details_json
    assert entry.outcome == "failure"
    assert entry.details["message"] == "sign-in refused"
    assert entry.details["error"] == error


def test_behind_a_queue_handler_a_stack_is_cut_and_not_a_failure(
    queued: tuple[logging.Logger, logging.handlers.QueueListener],
    entries: Callable[[], list[AuditEntry]],
) -> None:
    log, listener = queued
    log.info("signed in", stack_info=True)
    listener.stop()
    (entry,) = entries()
    assert (entry.outcome, entry.details["message"]) == ("success", "signed in")
    assert "error" not in entry.details


def test_an_audit_dict_record_behind_a_queue_handler_keeps_the_first_line_only(
    service: AuditService, entries: Callable[[], list[AuditEntry]], prefix: str
) -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    handler = AuditHandler(service)
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    log = logging.getLogger(f"{prefix}.audited")
    log.propagate = False
    queue_handler = logging.handlers.QueueHandler(records)
    log.addHandler(queue_handler)
    try:
        try:
            _raise_plain()
        except PermissionError:
            log.error("export failed", exc_info=True, extra={"audit": {"action": "note.export"}})
    finally:
        listener.stop()
        log.removeHandler(queue_handler)
        handler.close()
    (entry,) = entries()
    assert entry.details == {"message": "export failed"}


def test_a_direct_handler_keeps_a_multi_line_message(
    service: AuditService, entries: Callable[[], list[AuditEntry]], prefix: str
) -> None:
    log = logging.getLogger(f"{prefix}.direct")
    log.propagate = False
    handler = AuditHandler(service, loggers=[log.name])
    log.addHandler(handler)
    try:
        try:
            _raise_plain()
        except PermissionError:
            log.warning("sign-in refused\nfor alice", exc_info=True)
    finally:
        log.removeHandler(handler)
        handler.close()
    (entry,) = entries()
    assert entry.details["message"] == "sign-in refused\nfor alice"
    assert (entry.outcome, entry.details["error"]) == ("failure", "PermissionError")


def _log_once(
    service: AuditService,
    prefix: str,
    route: str,
    action: str,
    emit: Callable[[logging.Logger, Any], None],
) -> None:
    """``emit(logger, extra)`` once through an AuditHandler taking the record by ``route``: its
    ``extra={"audit": ...}`` dict, or the logger being one of its ``loggers=``."""
    log = logging.getLogger(f"{prefix}.app")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = AuditHandler(service, loggers=[log.name] if route == "loggers" else None)
    log.addHandler(handler)
    extra = {"audit": {"action": action}} if route == "audit-dict" else None
    try:
        emit(log, extra)  # no exception into the call
    finally:
        log.removeHandler(handler)
        handler.close()


@pytest.mark.parametrize("route", ["audit-dict", "loggers"])
def test_a_message_whose_arguments_do_not_format_is_still_recorded(
    service: AuditService, entries: Callable[[], list[AuditEntry]], prefix: str, route: str
) -> None:
    _log_once(
        service,
        prefix,
        route,
        "note.count",
        lambda log, extra: log.info("counted %d notes", "three", extra=extra),
    )
    (entry,) = entries()
    assert entry.details["message"] == "counted %d notes"
    assert entry.details["message_error"] == "TypeError: the arguments did not format"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError(SECRET)


@pytest.mark.parametrize("route", ["audit-dict", "loggers"])
def test_a_message_object_whose_str_raises_is_still_recorded(
    service: AuditService, entries: Callable[[], list[AuditEntry]], prefix: str, route: str
) -> None:
    _log_once(
        service,
        prefix,
        route,
        "note.export",
        lambda log, extra: log.warning(Unprintable(), extra=extra),
    )
    (entry,) = entries()
    assert entry.details["message"] == "<unprintable Unprintable message>"
    assert entry.details["message_error"] == "RuntimeError: str() of the message raised"
    assert SECRET not in entry.model_dump_json()


# -- from the writer thread ------------------------------------------------------------------------


def test_a_critical_record_from_the_writer_thread_does_not_wait_on_itself(
    tmp_path: Path, db_path: Path, prefix: str
) -> None:
    _, private, _ = keys.generate_keys(tmp_path / "keys")
    log = logging.getLogger(f"{prefix}.witness")
    log.setLevel(logging.INFO)
    log.propagate = False
    durations: list[float] = []
    failures: list[BaseException] = []
    threads: list[str] = []

    def shipped(checkpoint: SignedCheckpoint) -> None:
        threads.append(threading.current_thread().name)
        started = time.monotonic()
        try:
            log.info(
                "checkpoint shipped",
                extra={"audit": {"action": "witness.ship", "critical": True}},
            )
        except BaseException as exc:
            failures.append(exc)
        finally:
            durations.append(time.monotonic() - started)

    block_timeout = 5.0
    service = AuditService(
        database=db_path,
        signing_key_file=private,
        on_checkpoint=shipped,
        checkpoint_every=2,
        critical_sync=True,
        block_timeout=block_timeout,
        cleanup_enabled=False,
    )
    handler = AuditHandler(service)
    log.addHandler(handler)
    try:
        for i in range(6):
            service.record(action="note.save", resource_id=str(i))
            assert service.flush(30)
        assert service.flush(30)
    finally:
        log.removeHandler(handler)
        service.close(30)
    assert durations, "no checkpoint was delivered"
    assert set(threads) == {"audit-writer"}
    # Only the checkpoint close() signs finds the service closed.
    assert [type(exc) for exc in failures] in ([], [AuditServiceClosed])
    # Waiting on its own commit would have lasted block_timeout and ended in AuditWriteError.
    assert max(durations) < block_timeout / 2
    with AuditStore(db_path) as store:
        shipped_entries = list(store.query(action="witness.ship"))
    assert len(shipped_entries) >= len(durations) - 1  # the one at close() finds it closed
    assert all(entry.critical for entry in shipped_entries)
