"""`rotnet-correct`: not yet available (issue #4 builds it)."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def main(args: tuple[str, ...]) -> None:
    """Not yet available: issue #4 builds this command."""
    raise click.ClickException("rotnet-correct is not yet available in this version (issue #4 builds it)")
