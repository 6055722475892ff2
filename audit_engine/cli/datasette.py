"""The ``datasette-metadata`` command: the trail as a Datasette audit viewer
(:func:`~audit_engine.storage.viewer.datasette_metadata` does the work)."""

from __future__ import annotations

from pathlib import Path

import click

# refuse_output: the check prove --output makes (the trail's files, its dead letters, the keys).
from audit_engine.cli.output import refuse_output, root_database, whole_file
from audit_engine.formats import json_text
from audit_engine.storage.viewer import datasette_metadata


@click.command("datasette-metadata")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file (readable by its owner only) instead of standard output.",
)
@click.pass_context
def datasette_metadata_command(ctx: click.Context, output: Path | None) -> None:
    """Write a Datasette metadata file that makes the trail a readable audit viewer.

    `datasette serve audit.db --metadata FILE` then shows the entries newest first, with facets
    on actor, operation, outcome and resource_type and a description of every column; the
    engine's own tables are hidden. Datasette's metadata cannot hide a column, so the file adds
    a stylesheet that hides prev_hash and hash in the HTML table; they stay in row pages, .json
    and .csv (?_nocol=prev_hash&_nocol=hash leaves them out). SQLite only: Datasette cannot
    serve a PostgreSQL trail (copy it into a file with `audit-engine copy`). The database's
    own files and the key files are refused as --output.
    """
    if output is not None:
        refuse_output(ctx, output)
    text = json_text(datasette_metadata(root_database(ctx)), indent=2)
    if output is None:
        click.echo(text)
        return
    with whole_file(output) as out:
        out.write(text + "\n")
    click.echo(f"Datasette metadata written to {output}", err=True)
