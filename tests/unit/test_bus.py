"""EventBus dispatch and DomainEvent → AuditEntry mapping."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from audit_engine import DomainEvent, EventBus, EventDispatchError, Operation, Outcome


class UserEvent(DomainEvent):
    actor: str = "alice"


class UserDeleted(UserEvent):
    user_id: int = 0


class OrderPlaced(DomainEvent):
    pass


class Recorder:
    """A handler that remembers what it saw, tagged with a name."""

    def __init__(self, name: str, seen: list[tuple[str, str]]) -> None:
        self.name = name
        self.seen = seen

    def __call__(self, event: DomainEvent) -> None:
        self.seen.append((self.name, event.event_type))


def _fail(event: DomainEvent) -> None:
    raise ValueError(f"cannot handle {event.event_type}")


def _fail_too(event: DomainEvent) -> None:
    raise KeyError("missing")


# -- subscribe / emit --------------------------------------------------------------------------


def test_handlers_run_in_subscription_order() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    for name in ("first", "second", "third"):
        bus.subscribe(UserEvent, Recorder(name, seen))

    bus.emit(UserEvent(event_type="user.login"))

    assert seen == [("first", "user.login"), ("second", "user.login"), ("third", "user.login")]


def test_handler_receives_the_event_object_itself() -> None:
    bus = EventBus()
    received: list[DomainEvent] = []
    bus.subscribe(UserEvent, received.append)
    event = UserEvent(event_type="user.login")

    bus.emit(event)

    assert received == [event]
    assert received[0] is event


def test_subclass_events_reach_handlers_of_base_classes_only() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    bus.subscribe(DomainEvent, Recorder("any", seen))
    bus.subscribe(UserEvent, Recorder("user", seen))
    bus.subscribe(UserDeleted, Recorder("deleted", seen))
    bus.subscribe(OrderPlaced, Recorder("order", seen))

    bus.emit(UserDeleted(event_type="user.deleted"))
    bus.emit(UserEvent(event_type="user.login"))
    bus.emit(DomainEvent(event_type="plain"))

    assert seen == [
        ("any", "user.deleted"),
        ("user", "user.deleted"),
        ("deleted", "user.deleted"),
        ("any", "user.login"),
        ("user", "user.login"),
        ("any", "plain"),
    ]


def test_emit_without_subscribers_does_nothing() -> None:
    EventBus().emit(DomainEvent(event_type="nobody.listens"))  # must not raise


def test_the_same_handler_subscribed_twice_runs_twice() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    handler = Recorder("h", seen)
    bus.subscribe(UserEvent, handler)
    bus.subscribe(UserEvent, handler)

    bus.emit(UserEvent(event_type="e"))

    assert seen == [("h", "e"), ("h", "e")]


def test_handler_subscribed_during_emit_runs_from_the_next_emit() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    late = Recorder("late", seen)

    def subscribe_late(event: DomainEvent) -> None:
        seen.append(("early", event.event_type))
        if event.event_type == "one":
            bus.subscribe(DomainEvent, late)

    bus.subscribe(DomainEvent, subscribe_late)

    bus.emit(DomainEvent(event_type="one"))
    bus.emit(DomainEvent(event_type="two"))

    assert seen == [("early", "one"), ("early", "two"), ("late", "two")]


# -- unsubscribe -------------------------------------------------------------------------------


def test_unsubscribe_removes_the_handler_and_returns_true() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    keep, drop = Recorder("keep", seen), Recorder("drop", seen)
    bus.subscribe(UserEvent, keep)
    bus.subscribe(UserEvent, drop)

    assert bus.unsubscribe(UserEvent, drop) is True
    bus.emit(UserEvent(event_type="e"))

    assert seen == [("keep", "e")]


def test_unsubscribe_returns_false_when_nothing_matches() -> None:
    bus = EventBus()
    handler = Recorder("h", [])
    bus.subscribe(UserEvent, handler)

    assert bus.unsubscribe(UserEvent, Recorder("other", [])) is False
    assert bus.unsubscribe(DomainEvent, handler) is False  # the exact class, not a base
    assert bus.unsubscribe(UserDeleted, handler) is False  # nor a subclass
    assert EventBus().unsubscribe(UserEvent, handler) is False


def test_unsubscribe_removes_one_subscription_at_a_time() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    handler = Recorder("h", seen)
    bus.subscribe(UserEvent, handler)
    bus.subscribe(UserEvent, handler)

    assert bus.unsubscribe(UserEvent, handler) is True
    bus.emit(UserEvent(event_type="e"))
    assert seen == [("h", "e")]

    assert bus.unsubscribe(UserEvent, handler) is True
    assert bus.unsubscribe(UserEvent, handler) is False


def test_unsubscribe_matches_an_equal_bound_method() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    recorder = Recorder("r", seen)
    bus.subscribe(UserEvent, recorder.__call__)

    # Each attribute access makes a new bound-method object; equality is what counts.
    assert bus.unsubscribe(UserEvent, recorder.__call__) is True
    bus.emit(UserEvent(event_type="e"))
    assert seen == []


# -- failures ----------------------------------------------------------------------------------


def test_failing_handler_does_not_stop_later_handlers() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    bus.subscribe(UserEvent, Recorder("before", seen))
    bus.subscribe(UserEvent, _fail)
    bus.subscribe(UserEvent, Recorder("after", seen))

    with pytest.raises(EventDispatchError):
        bus.emit(UserEvent(event_type="user.login"))

    assert seen == [("before", "user.login"), ("after", "user.login")]


def test_failures_are_raised_together_in_handler_order() -> None:
    bus = EventBus()
    bus.subscribe(UserEvent, _fail)
    bus.subscribe(UserEvent, Recorder("ok", []))
    bus.subscribe(UserEvent, _fail_too)

    with pytest.raises(EventDispatchError) as exc:
        bus.emit(UserEvent(event_type="user.login"))

    error = exc.value
    assert error.event_type == "user.login"
    assert [handler for handler, _ in error.failures] == [_fail, _fail_too]
    assert [type(e) for _, e in error.failures] == [ValueError, KeyError]
    assert str(error) == (
        "2 handler(s) failed for 'user.login': "
        "_fail: ValueError('cannot handle user.login'), _fail_too: KeyError('missing')"
    )


def test_raise_errors_false_logs_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(raise_errors=False)
    seen: list[tuple[str, str]] = []
    bus.subscribe(UserEvent, _fail)
    bus.subscribe(UserEvent, Recorder("after", seen))

    with caplog.at_level(logging.ERROR, logger="audit_engine.bus"):
        bus.emit(UserEvent(event_type="user.login"))  # must not raise

    assert seen == [("after", "user.login")]
    [record] = caplog.records
    assert record.name == "audit_engine.bus"
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "1 handler(s) failed for 'user.login': _fail: ValueError('cannot handle user.login')"
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


def test_raise_errors_false_logs_nothing_when_all_handlers_succeed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(raise_errors=False)
    bus.subscribe(UserEvent, Recorder("ok", []))

    with caplog.at_level(logging.DEBUG, logger="audit_engine.bus"):
        bus.emit(UserEvent(event_type="e"))

    assert caplog.records == []


# -- argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("not_an_event", [{"event_type": "x"}, "x", None, OrderPlaced])
def test_emit_rejects_anything_but_a_domain_event(not_an_event: object) -> None:
    bus = EventBus()
    bus.subscribe(DomainEvent, Recorder("h", []))

    with pytest.raises(TypeError) as exc:
        bus.emit(not_an_event)  # type: ignore[arg-type]

    assert str(exc.value) == f"emit() takes a DomainEvent, got {type(not_an_event).__name__}"


@pytest.mark.parametrize("event_type", [int, "DomainEvent", DomainEvent(event_type="x"), None])
def test_subscribe_rejects_an_event_type_that_is_not_a_domain_event_class(
    event_type: object,
) -> None:
    with pytest.raises(TypeError) as exc:
        EventBus().subscribe(event_type, Recorder("h", []))  # type: ignore[arg-type]

    assert str(exc.value) == f"event_type must be a DomainEvent subclass, got {event_type!r}"


def test_subscribe_rejects_a_handler_that_is_not_callable() -> None:
    bus = EventBus()

    with pytest.raises(TypeError) as exc:
        bus.subscribe(UserEvent, "not callable")  # type: ignore[arg-type]

    assert str(exc.value) == "handler must be callable, got 'not callable'"
    bus.emit(UserEvent(event_type="e"))  # nothing was subscribed


# -- DomainEvent -------------------------------------------------------------------------------


def test_domain_event_defaults() -> None:
    before = datetime.now(UTC)
    event = DomainEvent(event_type="x")
    after = datetime.now(UTC)

    assert event.correlation_id is None
    assert event.payload == {}
    assert event.timestamp.utcoffset() == timedelta(0)
    assert before <= event.timestamp <= after


def test_domain_event_needs_a_non_empty_event_type() -> None:
    with pytest.raises(ValidationError) as exc:
        DomainEvent(event_type="")

    assert exc.value.errors()[0]["loc"] == ("event_type",)


def test_domain_event_is_frozen() -> None:
    event = DomainEvent(event_type="x")

    with pytest.raises(ValidationError):
        event.event_type = "y"  # type: ignore[misc]


def test_domain_event_payload_takes_what_details_take() -> None:
    # A set was refused before; the payload becomes details, so it converts the same way.
    event = DomainEvent(event_type="x", payload={"tags": {"b", "a"}, "on": date(2026, 1, 2)})

    assert event.payload == {"tags": ["a", "b"], "on": "2026-01-02"}
    assert event.to_audit_entry().details_json == '{"on":"2026-01-02","tags":["a","b"]}'


def test_domain_event_payload_that_cannot_be_json_is_refused_naming_the_key() -> None:
    with pytest.raises(ValidationError) as exc:
        DomainEvent(event_type="x", payload={"tags": {1j}})

    (error,) = exc.value.errors()
    assert error["loc"] == ("payload",)
    assert error["msg"].startswith("Value error, payload.tags[] has type complex, ")


# -- DomainEvent carries the entry's fields (item 16) ------------------------------------------


def test_the_base_domain_event_carries_the_entrys_fields() -> None:
    # Was: accepted and ignored -- actor NULL, operation execute, resource NULL.
    event = DomainEvent(
        event_type="note.save",
        actor="alice",
        resource_type="note",
        resource_id="42",
        operation="update",
        outcome="failure",
        correlation_id="req-1",
        critical=True,
    )

    entry = event.to_audit_entry()

    assert (entry.action, entry.actor, entry.resource_type, entry.resource_id) == (
        "note.save",
        "alice",
        "note",
        "42",
    )
    assert (entry.operation, entry.outcome) == (Operation.UPDATE, Outcome.FAILURE)
    assert (entry.correlation_id, entry.critical, entry.details) == ("req-1", True, {})


def test_the_base_domain_event_fields_default_to_the_entrys_defaults() -> None:
    event = DomainEvent(event_type="x")

    assert (event.actor, event.resource_type, event.resource_id, event.correlation_id) == (
        None,
        None,
        None,
        None,
    )
    assert (event.operation, event.outcome, event.critical) == (
        Operation.EXECUTE,
        Outcome.SUCCESS,
        False,
    )


@pytest.mark.parametrize("event_class", [DomainEvent, UserDeleted], ids=["base", "subclass"])
def test_a_domain_event_refuses_an_unknown_keyword(event_class: type[DomainEvent]) -> None:
    with pytest.raises(ValidationError) as exc:
        event_class(event_type="note.save", user="alice")

    (error,) = exc.value.errors()
    assert (error["loc"], error["type"]) == (("user",), "extra_forbidden")


def test_a_domain_event_takes_ids_as_an_entry_does() -> None:
    event = DomainEvent(event_type="x", resource_id=42, actor=7)

    assert (event.resource_id, event.actor) == ("42", "7")
    assert event.to_audit_entry().resource_id == "42"


def test_a_domain_event_with_a_bad_operation_is_refused_where_it_is_made() -> None:
    with pytest.raises(ValidationError) as exc:
        DomainEvent(event_type="x", operation="teleport")

    assert exc.value.errors()[0]["loc"] == ("operation",)


class AccountDebited(DomainEvent):
    actor: str
    operation: Operation = Operation.UPDATE
    outcome: Outcome = Outcome.FAILURE
    resource_type: str = "account"
    resource_id: str
    critical: bool = True
    amount_cents: int
    posted_at: datetime


def test_to_audit_entry_maps_subclass_fields_onto_the_entry() -> None:
    stamp = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
    event = AccountDebited(
        event_type="account.debit",
        timestamp=stamp,
        correlation_id="req-7",
        payload={"note": "rent", "tags": ["monthly"]},
        actor="alice",
        resource_id="acc-42",
        amount_cents=125_000,
        posted_at=datetime(2024, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=1))),
    )

    entry = event.to_audit_entry()

    assert entry.action == "account.debit"
    assert entry.timestamp == stamp
    assert entry.correlation_id == "req-7"
    assert entry.actor == "alice"
    assert entry.operation is Operation.UPDATE
    assert entry.outcome is Outcome.FAILURE
    assert entry.resource_type == "account"
    assert entry.resource_id == "acc-42"
    assert entry.critical is True
    # Other subclass fields join the payload in details, as JSON values.
    assert entry.details == {
        "note": "rent",
        "tags": ["monthly"],
        "amount_cents": 125_000,
        "posted_at": "2024-03-01T10:00:00+01:00",
    }


def test_to_audit_entry_of_a_plain_event_uses_entry_defaults() -> None:
    event = DomainEvent(event_type="job.run", payload={"job": "nightly"})

    entry = event.to_audit_entry()

    assert entry.action == "job.run"
    assert entry.timestamp == event.timestamp
    assert entry.correlation_id is None
    assert entry.details == {"job": "nightly"}
    assert (entry.actor, entry.resource_type, entry.resource_id) == (None, None, None)
    assert entry.operation is Operation.EXECUTE
    assert entry.outcome is Outcome.SUCCESS
    assert entry.critical is False


def test_to_audit_entry_maps_only_the_fields_a_subclass_declares() -> None:
    entry = UserDeleted(event_type="user.deleted", actor="root", user_id=9).to_audit_entry()

    assert entry.actor == "root"
    assert entry.operation is Operation.EXECUTE
    assert entry.details == {"user_id": 9}


def test_to_audit_entry_makes_a_new_entry_each_time() -> None:
    event = DomainEvent(event_type="x")

    first, second = event.to_audit_entry(), event.to_audit_entry()

    assert first.event_id != second.event_id
    assert first.model_dump(exclude={"event_id"}) == second.model_dump(exclude={"event_id"})
