"""``record_many()``: many entries validated first, then accepted all or none in one hand-off.

Placeholder until the bulk path lands (issue 15 item 5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from audit_engine.models import AuditEntry

if TYPE_CHECKING:
    from audit_engine.pipeline.service import AuditService


def record_many(
    service: AuditService, entries: Iterable[AuditEntry | dict[str, Any]], connection: Any
) -> list[str | None]:
    raise NotImplementedError("record_many() lands with issue 15 item 5")
