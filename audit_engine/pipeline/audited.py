"""``@audited``: one audit entry per call of a command or function (``AuditService.audited``).

The entry says how the call ended: ``outcome=success`` when it returned (or exited with status
0), ``outcome=failure`` with ``details["error"]`` set to the exception's type when it raised. Only
the type: an exception's message can hold what the audit trail must not (a path, a token, a
user's input). The exception itself is re-raised unchanged.

Everything about the decoration is checked when it is applied, not on the first call: the
fields (as ``record()`` checks them), the parameter names given to take values from, and that
the target is a plain synchronous function (not a classmethod/staticmethod object, not a
non-callable). The values taken from each call are checked before the function runs, merged as
``record()`` will merge them (the ``context()``'s details, the decorator's, the taken ones) and
against the service's ``max_details_bytes``: an entry that cannot be recorded raises without
running the function, so its result is never lost.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

from audit_engine.models import AuditEntry, Outcome

if TYPE_CHECKING:
    from audit_engine.pipeline.service import AuditService

logger = logging.getLogger("audit_engine.audited")

_T = TypeVar("_T", bound=Callable[..., Any])


class Decorator(Protocol):
    """What ``audited()`` returns: gives back the function (or click command) it wraps."""

    def __call__(self, target: _T, /) -> _T: ...


# The fields a decoration may fix; the others belong to each call (outcome, event_id,
# timestamp) or are the decorator's first argument (action).
_FIXED_FIELDS = frozenset(
    {"actor", "operation", "resource_type", "resource_id", "correlation_id", "details", "critical"}
)
_PER_CALL_FIELDS = frozenset({"outcome", "event_id", "timestamp", "action"})


def audited(
    service: AuditService,
    action: str,
    /,
    *,
    resource_id_arg: str | None = None,
    details_args: Iterable[str] = (),
    **fields: Any,
) -> Decorator:
    """A decorator recording one entry named ``action`` per call of the function it wraps.

    ``fields`` are ``record()``'s (``actor``, ``operation``, ``resource_type``, ``resource_id``,
    ``correlation_id``, ``details``, ``critical``); a field not given is left to the service's
    ``context()``. ``resource_id_arg`` names the parameter whose value, in each call, is the
    entry's ``resource_id``; ``details_args`` names parameters whose values go into ``details``
    under their own names. A ``click.Command`` can be given directly: its callback is wrapped.
    """
    misplaced = sorted(set(fields) & _PER_CALL_FIELDS)
    if misplaced:
        raise TypeError(
            f"audited() cannot fix {', '.join(misplaced)}: it is set for each call "
            "(outcome from how the call ended)"
        )
    unknown = sorted(set(fields) - _FIXED_FIELDS)
    if unknown:
        raise TypeError(
            f"audited() got unknown field(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(_FIXED_FIELDS))}"
        )
    if resource_id_arg is not None and "resource_id" in fields:
        raise TypeError("audited() takes resource_id or resource_id_arg, not both")
    if isinstance(details_args, str):
        # A lone name would otherwise be taken letter by letter.
        details_args = (details_args,)
    taken = tuple(details_args)
    # The same checks as record(): a bad field fails here, naming it, not in the first call.
    AuditEntry(action=action, **fields)
    fixed_details = dict(fields.pop("details", None) or {})

    def decorate(target: _T) -> _T:
        if isinstance(target, classmethod | staticmethod):
            kind = type(target).__name__
            raise TypeError(
                f"audited() cannot wrap a {kind} object: put @audited under @{kind} "
                "(next to the function), so that it wraps the function itself"
            )
        if isinstance(target, click.Command):
            if target.callback is None:
                raise TypeError(f"audited(): the click command {target.name!r} has no callback")
            target.callback = _wrap(target.callback)
            return target
        return _wrap(target)  # type: ignore[return-value]

    def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(func):
            raise TypeError(
                f"audited() decorates a function or a click command, got {type(func).__name__}"
            )
        name = getattr(func, "__qualname__", repr(func))
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"audited() cannot wrap the coroutine function {name}: the engine is a "
                "synchronous library; record() from the coroutine instead"
            )
        if inspect.isgeneratorfunction(func):
            # Its body runs after the call has returned: the entry would not describe it.
            raise TypeError(
                f"audited() cannot wrap the generator function {name}: its body runs "
                "after the call returns"
            )
        signature = _signature_for(func, name, resource_id_arg, taken)
        # A decorator under this one (functools.wraps) may supply parameters itself
        # (click.pass_context, a session injector): the call then does not bind to the
        # signature inspect follows __wrapped__ to.
        wrapper = signature is not None and hasattr(func, "__wrapped__")
        taking = _Taking(service, action, name, resource_id_arg, taken, signature, wrapper)

        @functools.wraps(func)
        def audited_call(*args: Any, **kwargs: Any) -> Any:
            call_fields = dict(fields)
            details = dict(fixed_details)
            # Before the call: an entry that cannot be recorded raises without running it.
            taking.take(args, kwargs, call_fields, details)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                exit_code = _exit_code(exc)
                if exit_code is None or exit_code != 0:
                    _record_failure(service, action, call_fields, details, exc, exit_code)
                    raise
                # sys.exit(0), ctx.exit(0): the command finished as it meant to.
                _record(service, action, call_fields, details, Outcome.SUCCESS)
                raise
            _record(service, action, call_fields, details, Outcome.SUCCESS)
            return result

        return audited_call

    return decorate


def _signature_for(
    func: Callable[..., Any], name: str, resource_id_arg: str | None, taken: tuple[str, ...]
) -> inspect.Signature | None:
    """The signature to bind each call with, or None when nothing is taken from arguments."""
    wanted = ([resource_id_arg] if resource_id_arg is not None else []) + list(taken)
    if not wanted:
        return None
    signature = inspect.signature(func)
    params = signature.parameters
    for arg in wanted:
        option = "resource_id_arg" if arg == resource_id_arg else "details_args"
        if arg not in params:
            raise TypeError(
                f"audited({option}={arg!r}): {name}() has no parameter {arg!r} "
                f"(its parameters: {', '.join(params) or 'none'})"
            )
        star = _VARIADIC.get(params[arg].kind)
        if star is not None:
            # Its value is a tuple or dict of whatever the caller passed: not one value.
            others = [p for p, param in params.items() if param.kind not in _VARIADIC]
            raise TypeError(
                f"audited({option}={arg!r}): {star}{arg} of {name}() is a variadic parameter, "
                "which cannot be used: name one of its named parameters "
                f"({', '.join(others) or 'it has none'})"
            )
    return signature


_VARIADIC: dict[inspect._ParameterKind, str] = {
    inspect.Parameter.VAR_POSITIONAL: "*",
    inspect.Parameter.VAR_KEYWORD: "**",
}


class _Taking:
    """Takes ``resource_id_arg``/``details_args`` from each call and checks the entry to be.

    The check merges the details as ``record()`` will (the ``context()``'s, the decorator's,
    the taken ones, inner winning), so a combination over ``max_details_bytes`` is refused
    before the function runs, not after it has returned.
    """

    def __init__(
        self,
        service: AuditService,
        action: str,
        name: str,
        resource_id_arg: str | None,
        taken: tuple[str, ...],
        signature: inspect.Signature | None,
        wrapper: bool,
    ) -> None:
        self.service = service
        self.action = action
        self.name = name
        self.resource_id_arg = resource_id_arg
        self.taken = taken
        self.signature = signature
        self.wrapper = wrapper

    def take(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call_fields: dict[str, Any],
        details: dict[str, Any],
    ) -> None:
        """Put the call's values in ``call_fields``/``details``; raise if it cannot be recorded."""
        taken_details: dict[str, Any] = {}
        rid: Any = None
        if self.signature is not None:
            values = self._values(self.signature, args, kwargs)
            if values is None:
                return  # the call itself raises the same TypeError, and is recorded as a failure
            if self.resource_id_arg is not None:
                rid = values.get(self.resource_id_arg)
                if isinstance(rid, bytes | bytearray):
                    # pydantic would decode it silently; which encoding is the app's to say.
                    raise TypeError(
                        f"audited(resource_id_arg={self.resource_id_arg!r}): {self.name}() was "
                        f"given {type(rid).__name__}; the resource id is text (decode it, or "
                        "pass a str)"
                    )
            taken_details = {arg: values[arg] for arg in self.taken}
        # The context's details as record() will read them: the same thread, the same block.
        frame = self.service._frames.current()
        context_details = frame.details if frame is not None else {}
        if self.signature is None and not (context_details and details):
            return  # nothing merged: each part was checked on its own, when it was given
        entry: dict[str, Any] = {
            "action": self.action,
            "details": {**context_details, **details, **taken_details},
        }
        if self.resource_id_arg is not None:
            entry["resource_id"] = rid
        try:
            checked = self._validate(entry)
        except ValueError as exc:
            raise self._refusal(rid, taken_details, bool(context_details), details, exc) from exc
        if self.resource_id_arg is not None:
            call_fields["resource_id"] = checked.resource_id
        details.update({arg: checked.details[arg] for arg in taken_details})

    def _validate(self, fields: dict[str, Any]) -> AuditEntry:
        return AuditEntry.model_validate(
            fields, context={"max_details_bytes": self.service.settings.max_details_bytes}
        )

    def _refusal(
        self,
        rid: Any,
        taken_details: dict[str, Any],
        has_context: bool,
        fixed_details: dict[str, Any],
        exc: ValueError,
    ) -> ValueError:
        """The error naming what cannot be recorded: one parameter's value, or the merge."""
        head = f"audited({self.action!r}): "
        tail = f", so {self.name}() was not run: "
        if self.resource_id_arg is not None:
            try:
                self._validate({"action": self.action, "resource_id": rid})
            except ValueError as alone:
                return ValueError(
                    f"{head}the value of parameter {self.resource_id_arg!r} (resource_id_arg) "
                    f"of {self.name}() cannot be the entry's resource_id{tail}{alone}"
                )
        for arg, value in taken_details.items():
            try:
                self._validate({"action": self.action, "details": {arg: value}})
            except ValueError as alone:
                return ValueError(
                    f"{head}the value of parameter {arg!r} (details_args) of {self.name}() "
                    f"cannot be recorded in details{tail}{alone}"
                )
        # Each part fits alone: together they do not (in practice, max_details_bytes).
        parts = [
            *(["the context()'s details"] if has_context else []),
            *(["the decorator's details"] if fixed_details else []),
            *(
                [f"the values of {', '.join(repr(arg) for arg in taken_details)}"]
                if taken_details
                else []
            ),
        ]
        return ValueError(
            f"{head}the entry's details, merged from {' and '.join(parts)}, cannot be "
            f"recorded{tail}{exc}"
        )

    def _values(
        self, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The call's argument values by parameter name; None: the call cannot bind."""
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            if not self.wrapper:
                return None
        else:
            bound.apply_defaults()
            return dict(bound.arguments)
        # A wrapper whose decorator supplies a parameter: click passes parameters as
        # keywords, so they are found there; a value found nowhere is never left out silently.
        wanted = ([self.resource_id_arg] if self.resource_id_arg is not None else []) + list(
            self.taken
        )
        missing = [arg for arg in wanted if arg not in kwargs]
        if missing:
            raise TypeError(
                f"audited(): the call of {self.name}() does not bind to its signature "
                f"{signature} and gives no {', '.join(f'{arg}=' for arg in missing)} keyword, "
                "so the entry would lack it; a decorator under @audited supplies arguments "
                "(click.pass_context, one that injects a session): put @audited under it, "
                f"next to the function; {self.name}() was not run"
            )
        return kwargs


def _exit_code(exc: BaseException) -> int | None:
    """The exit status a SystemExit or click's Exit asks for (None: not an exit)."""
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, bool):
            return int(code)  # sys.exit(True) exits with 1, as Python does
        return code if isinstance(code, int) else 1  # sys.exit("message") exits with 1
    if isinstance(exc, click.exceptions.Exit):  # ctx.exit(code)
        return exc.exit_code
    return None


def _record(
    service: AuditService,
    action: str,
    call_fields: dict[str, Any],
    details: dict[str, Any],
    outcome: Outcome,
) -> None:
    if details:
        service.record(action=action, outcome=outcome, details=details, **call_fields)
    else:
        service.record(action=action, outcome=outcome, **call_fields)


def _record_failure(
    service: AuditService,
    action: str,
    call_fields: dict[str, Any],
    details: dict[str, Any],
    exc: BaseException,
    exit_code: int | None,
) -> None:
    details = {**details, "error": type(exc).__name__}
    if exit_code is not None:
        details["exit_code"] = exit_code
    try:
        _record(service, action, call_fields, details, Outcome.FAILURE)
    except Exception:
        # The caller must see the function's own exception; the recording error is logged.
        logger.exception(
            "could not record the failure of %r (%s); the original exception propagates",
            action,
            type(exc).__name__,
        )
