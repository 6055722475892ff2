"""AuditHandler: the stdlib ``logging`` bridge (docs/integrations.md, "The logging bridge").

A log record becomes an audit entry when it carries ``extra={"audit": {...}}`` (the dict holds
``record()``'s fields), or when it comes from one of the loggers named in ``loggers=`` (or their
children). Every other record is ignored.

The handler never recurses and never deadlocks, the two ways logging bridges fail (OpenTelemetry
#3193, #4585): records from the engine's own loggers (``audit_engine`` and below) are ignored, a
record logged while this thread is already inside the handler (a redaction or a policy that logs)
is ignored, and ``record()`` runs without the handler's lock. It waits no longer than the
service's ``on_full`` allows, because ``record()`` itself honours ``on_full``/``block_timeout``.

It needs no ``QueueHandler`` in front (``record()`` only hands the entry to the writer thread),
and is best attached directly: ``QueueHandler.prepare()`` formats the traceback into the message
and drops ``exc_info``, so the exception's type is gone and its message is in the text. A
message holding a formatted traceback is therefore cut to its first line (see
:func:`_message_of`).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from audit_engine.models import Outcome
from audit_engine.pipeline.service import AuditService

# The engine's own records: auditing them would feed the handler its own warnings (a full queue
# logs one) and could recurse.
_ENGINE_LOGGER = "audit_engine"
_ENGINE_CHILDREN = _ENGINE_LOGGER + "."
# Where a record taken through ``loggers=`` that could not be recorded is reported; a record of
# the engine's own, so this handler ignores it.
_error_logger = logging.getLogger("audit_engine.logging")
_AUDIT_ATTRIBUTE = "audit"
# The exit hook drains a service for as long (audit_engine.pipeline.lifecycle).
_DEFAULT_CLOSE_TIMEOUT_S = 60.0
# Lines that logging.Formatter (through the traceback module) writes into a message when a
# QueueHandler formats a record's exception or stack: the header of an exception's traceback (an
# exception group's too) and the separators of a chain, whose first exception may have no
# traceback and so no header.
_TRACEBACK_LINE = re.compile(
    r"^(?:  \+ Exception Group )?Traceback \(most recent call last\):$"
    r"|^The above exception was the direct cause of the following exception:$"
    r"|^During handling of the above exception, another exception occurred:$",
    re.MULTILINE,
)
_STACK_LINE = re.compile(r"^Stack \(most recent call last\):$", re.MULTILINE)
_TRACEBACK_HEADER = re.compile(
    r"^(?:  \+ Exception Group )?Traceback \(most recent call last\):$", re.MULTILINE
)
# The last line of a traceback's frames: "module.Type: message" or "Type" alone.
_EXCEPTION_LINE = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


class AuditHandler(logging.Handler):
    """A ``logging.Handler`` that records audit entries; see the module docstring.

    ``AuditHandler(service)`` records into a service the application owns (and closes).
    Without a service, ``AuditHandler(**settings)`` builds its own ``AuditService(**settings)``
    (``database="audit.db"``, ``on_full="drop"``, ...; none at all: from the environment) and
    closes it, drained, in ``close()`` — which ``logging.shutdown()`` calls at exit — waiting at
    most ``close_timeout`` seconds. Both work from ``logging.config.dictConfig`` with
    ``"()": "audit_engine.AuditHandler"`` (a service as ``"ext://module.attribute"``).

    A record from ``loggers`` becomes: ``action`` the logger's name, ``outcome`` failure for
    ERROR and above or a record with an exception (else success), ``details`` ``message``,
    ``logger``, ``level`` (and ``error``, the exception's type, never its message). A record with
    ``extra={"audit": {...}}`` becomes ``record(**audit)``, its message added as
    ``details["message"]`` unless the dict's details has one.

    Errors: an ``extra={"audit": ...}`` record that cannot be recorded (invalid fields, a full
    queue with ``on_full='block'``, a closed service) raises to the logging call, as ``record()``
    would: the application asked for that entry (a message whose %-arguments do not format, or
    whose ``str()`` raises, is not an error: it is recorded as best it can be, noted in
    ``details["message_error"]``). A record
    taken only through ``loggers=`` goes to
    :meth:`handleError`, which logs an ERROR on ``audit_engine.logging`` (also when
    ``logging.raiseExceptions`` is off: never silent).
    """

    def __init__(
        self,
        service: AuditService | None = None,
        *,
        loggers: Iterable[str] | None = None,
        level: int | str = logging.NOTSET,
        close_timeout: float = _DEFAULT_CLOSE_TIMEOUT_S,
        **settings: Any,
    ) -> None:
        if service is not None and settings:
            raise TypeError(
                "AuditHandler() takes a service or settings for a service of its own, not both "
                f"(got service= and {', '.join(sorted(settings))})"
            )
        if service is not None and not isinstance(service, AuditService):
            raise TypeError(
                f"AuditHandler(service=...) must be an AuditService, got {type(service).__name__}"
            )
        if isinstance(loggers, str):
            raise TypeError(
                "AuditHandler(loggers=...) takes a list of logger names, "
                f"not one string ({loggers!r})"
            )
        names = tuple(loggers or ())
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"AuditHandler(loggers=...) names loggers: got {name!r}")
        if isinstance(close_timeout, bool) or not (
            isinstance(close_timeout, int | float) and close_timeout >= 0
        ):
            raise ValueError(
                f"AuditHandler(close_timeout=...) is seconds, a number >= 0, got {close_timeout!r}"
            )
        super().__init__(level)
        # Built last: a bad argument above must not leave a service (and its thread) behind.
        self.owns_service = service is None
        self.service: AuditService = AuditService(**settings) if service is None else service
        self.loggers = names
        self._chosen = frozenset(names)
        self._chosen_children = tuple(f"{name}." for name in names)
        self.close_timeout = float(close_timeout)
        self._inside = threading.local()

    # -- logging.Handler -------------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter, then emit without the handler's lock (see the module docstring)."""
        # logging.Handler.handle holds self.lock around emit(); record() may wait for room in
        # the queue, and a lock held there is how OTel's bridge deadlocked. emit() needs none.
        passed = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # Python 3.12: a filter may swap the record
            record = passed
        if passed:
            self.emit(record)
        return passed

    def emit(self, record: logging.LogRecord) -> None:
        """Record ``record`` as an audit entry if it is one (see the class docstring)."""
        name = record.name
        if name == _ENGINE_LOGGER or name.startswith(_ENGINE_CHILDREN):
            return
        inside = self._inside
        if getattr(inside, "active", False):
            return  # logged by something record() called: auditing it would recurse
        audit = getattr(record, _AUDIT_ATTRIBUTE, None)
        if audit is None and not self._from_chosen_logger(name):
            return
        inside.active = True
        try:
            if audit is not None:
                self.service.record(**_fields_of_audit(audit, record))
                return
            try:
                self.service.record(**_fields_of_log(record))
            except Exception:
                self.handleError(record)
        finally:
            inside.active = False

    def handleError(self, record: logging.LogRecord) -> None:
        """Report a record from ``loggers=`` that could not be recorded, as an ERROR.

        On ``audit_engine.logging``, with the exception; logging's own handleError prints only
        while ``logging.raiseExceptions`` is on, and an audit entry must not vanish silently.
        """
        _error_logger.error(
            "could not record the log record of %r (%s:%s) as an audit entry",
            record.name,
            record.pathname,
            record.lineno,
            exc_info=sys.exc_info(),
        )

    def flush(self) -> None:
        """Wait (at most ``close_timeout`` seconds) until what was recorded is committed."""
        if not self.service.closed:
            self.service.flush(self.close_timeout)

    def close(self) -> None:
        """Detach from logging; a service of its own is closed, drained, here."""
        try:
            if self.owns_service:
                self.service.close(self.close_timeout)
        finally:
            super().close()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        database = self.service.settings.database
        return f"<{type(self).__name__} {database} ({level})>"

    # -- the mapping -----------------------------------------------------------------------------

    def _from_chosen_logger(self, name: str) -> bool:
        return name in self._chosen or name.startswith(self._chosen_children)


def _fields_of_audit(audit: object, record: logging.LogRecord) -> dict[str, Any]:
    """``record()``'s keywords for a record with ``extra={"audit": {...}}``."""
    if not isinstance(audit, Mapping):
        raise TypeError(
            "a log record's extra={'audit': ...} must be a dict of record() fields, "
            f"got {type(audit).__name__}"
        )
    fields = dict(audit)
    details = fields.get("details")
    if details is None or (isinstance(details, Mapping) and "message" not in details):
        message, notes, _error = _message_of(record)
        fields["details"] = {**(details or {}), "message": message, **notes}
    # Anything else is record()'s to refuse, naming the field.
    return fields


def _fields_of_log(record: logging.LogRecord) -> dict[str, Any]:
    """``record()``'s keywords for a record taken because of the logger it came from."""
    message, notes, error = _message_of(record)
    details: dict[str, Any] = {
        "message": message,
        "logger": record.name,
        "level": record.levelname,
        **notes,
    }
    failed = record.levelno >= logging.ERROR
    if record.exc_info and record.exc_info[0] is not None:
        error = record.exc_info[0].__name__  # the type only: messages hold secrets
    if error is not None:
        details["error"] = error
        failed = True
    return {
        "action": record.name,
        "outcome": Outcome.FAILURE if failed else Outcome.SUCCESS,
        "details": details,
    }


def _message_of(record: logging.LogRecord) -> tuple[str, dict[str, str], str | None]:
    """The record's message, notes for ``details``, and an exception type read from its text.

    A message whose %-arguments do not format is kept unformatted, noted as
    ``message_error`` (the entry is still recorded: losing it to a formatting bug in the
    logging call would be worse); so is a message object whose ``str()`` raises, recorded as
    ``<unprintable Type message>``. A message holding a formatted traceback (what
    ``QueueHandler.prepare()`` leaves, ``exc_info`` gone) is cut to its first line, which is
    the app's: the rest can hold the exception's message. The type is then read from the
    traceback's last block ("unknown" when its text is not Python's).
    """
    notes: dict[str, str] = {}
    try:
        message = record.getMessage()
    except Exception as exc:
        try:
            message = str(record.msg)
        except Exception:
            # The message object itself cannot become text (its __str__ raises): the entry is
            # still recorded, naming its type; the exception's text could hold anything.
            message = f"<unprintable {type(record.msg).__name__} message>"
            notes["message_error"] = f"{type(exc).__name__}: str() of the message raised"
        else:
            notes["message_error"] = f"{type(exc).__name__}: the arguments did not format"
    error: str | None = None
    if record.exc_info is None:
        found = _TRACEBACK_LINE.search(message)
        if found is not None:
            error = _exception_type(message[found.start() :])
            message = message.split("\n", 1)[0]
        elif _STACK_LINE.search(message) is not None:
            message = message.split("\n", 1)[0]
    return message, notes, error


def _exception_type(text: str) -> str:
    """The type named by the last block of a formatted traceback, or ``"unknown"``."""
    # The last unindented header: the exception that was logged (a chain ends with it); the
    # headers of an exception group's members are indented.
    headers = list(_TRACEBACK_HEADER.finditer(text))
    if not headers:
        return "unknown"
    for line in text[headers[-1].end() :].splitlines()[1:]:
        line = line.removeprefix("  | ")  # an exception group's frames
        if line[:1].isspace():
            continue  # a frame, its source line or its carets
        matched = _EXCEPTION_LINE.match(line)
        if matched is None:
            return "unknown"
        return matched.group(1).rsplit(".", 1)[-1]
    return "unknown"
