"""`rotnet-evaluate`: not yet available (issue #3 builds it)."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def main(args: tuple[str, ...]) -> None:
    """Not yet available: issue #3 builds this command."""
    raise click.ClickException("rotnet-evaluate is not yet available in this version (issue #3 builds it)")
