"""The exception family: one base class, ValueError for bad input, EventDispatchError's message."""

from __future__ import annotations

import functools

import pytest

import audit_engine
from audit_engine import errors
from audit_engine.errors import AuditEngineError, EventDispatchError

ALL_ERRORS = [
    errors.SettingsError,
    errors.InvalidEntryError,
    errors.AuditServiceClosed,
    errors.AuditQueueFull,
    errors.AuditWriteError,
    errors.AuditStoreError,
    errors.EventDispatchError,
]
VALUE_ERRORS = {errors.SettingsError, errors.InvalidEntryError}


def test_every_error_class_of_the_module_is_listed_here() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }

    assert defined == {AuditEngineError, *ALL_ERRORS}


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: e.__name__)
def test_every_error_derives_from_the_base_class(error: type[Exception]) -> None:
    assert issubclass(error, AuditEngineError)
    assert issubclass(AuditEngineError, Exception)


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: e.__name__)
def test_only_bad_input_errors_are_value_errors(error: type[Exception]) -> None:
    assert issubclass(error, ValueError) is (error in VALUE_ERRORS)


@pytest.mark.parametrize("error", [AuditEngineError, *ALL_ERRORS], ids=lambda e: e.__name__)
def test_errors_are_exported_from_the_package(error: type[Exception]) -> None:
    assert error.__name__ in audit_engine.__all__
    assert getattr(audit_engine, error.__name__) is error


def test_catching_the_base_class_catches_a_subclass() -> None:
    with pytest.raises(AuditEngineError, match=r"^no audit database$"):
        raise errors.AuditStoreError("no audit database")


def _on_login(event: object) -> None:
    """A named handler for the message tests."""


def test_event_dispatch_error_message_and_attributes() -> None:
    first, second = ValueError("bad amount"), KeyError("user")
    failures = [(_on_login, first), (print, second)]

    error = EventDispatchError("user.login", failures)

    assert error.event_type == "user.login"
    assert error.failures == failures
    assert error.failures is not failures  # a copy: later changes to the input do not leak in
    assert str(error) == (
        "2 handler(s) failed for 'user.login': "
        "_on_login: ValueError('bad amount'), print: KeyError('user')"
    )


def test_event_dispatch_error_names_a_handler_without_qualname_by_repr() -> None:
    handler = functools.partial(_on_login)

    error = EventDispatchError("x", [(handler, RuntimeError("down"))])

    assert str(error) == f"1 handler(s) failed for 'x': {handler!r}: RuntimeError('down')"


def test_event_dispatch_error_names_a_bound_method_by_qualname() -> None:
    class Audit:
        def handle(self, event: object) -> None:
            """Never called."""

    error = EventDispatchError("x", [(Audit().handle, OSError("disk"))])

    assert str(error) == (
        "1 handler(s) failed for 'x': "
        "test_event_dispatch_error_names_a_bound_method_by_qualname.<locals>.Audit.handle: "
        "OSError('disk')"
    )
