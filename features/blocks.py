"""``with`` blocks a scenario opens in one step and leaves in a later one: units of work
(``audit.scope()``), requests (``audit.context()``), maintenance runs (``audit.disabled()``).

They share one stack, innermost last, because they nest in one context variable of the service: a
block must be left before the one around it.
"""

from contextlib import AbstractContextManager
from typing import Any

from behave.runner import Context


def open_blocks(context: Context) -> list[AbstractContextManager[Any]]:
    """The blocks the scenario opened and has not left, innermost last."""
    world = context.world
    if not hasattr(world, "open_blocks"):
        world.open_blocks = []
        # A scenario that fails half-way still leaves its blocks, innermost first.
        context.add_cleanup(_leave_all, world.open_blocks)
    blocks: list[AbstractContextManager[Any]] = world.open_blocks
    return blocks


def _leave_all(blocks: list[AbstractContextManager[Any]]) -> None:
    while blocks:
        blocks.pop().__exit__(None, None, None)


def enter(context: Context, block: AbstractContextManager[Any]) -> None:
    """Open ``block`` until a later step leaves it."""
    block.__enter__()
    open_blocks(context).append(block)


def leave(context: Context, what: str) -> None:
    """Leave the innermost open block (``what`` names it in the failure message)."""
    blocks = open_blocks(context)
    assert blocks, f"no {what} is open"
    blocks.pop().__exit__(None, None, None)
