"""`rotnet-bench`: run benchmarks and rewrite their sections of docs/benchmarks.md.

    rotnet-bench                 # all benchmarks, full size
    rotnet-bench geometry        # one benchmark; the other sections of the file stay as they were

Each section records the command, the machine and the date next to its figures, so a number in the
file can always be traced to how it was made.
"""

from __future__ import annotations

import datetime
import re
import shlex
import sys
import time
from pathlib import Path

import click

from benchmarks import BENCHMARKS, load
from benchmarks.common import REPO_ROOT, machine_summary
from pipeline import interrupts
from schemas import output_rules

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by `rotnet-bench` (tools/bench.py); each section says the command, machine and date that
produced it. Ratios are measured side by side in the same run. Rerun one section with
`rotnet-bench NAME`; the others are kept.
"""


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def render_section(name: str, body: str, command: str, seconds: float) -> str:
    start, end = _markers(name)
    _, description = BENCHMARKS[name]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{start}\n## {name}: {description}\n\n"
        f"Command: `{command}` - machine: {machine_summary()} - {stamp} - took {seconds:.0f} s\n\n"
        f"{body.strip()}\n{end}"
    )


def update_document(document: str, sections: dict[str, str]) -> str:
    """Replace (or add) the named sections, keeping every other section and the registry order."""
    existing = {}
    for name in BENCHMARKS:
        start, end = _markers(name)
        match = re.search(re.escape(start) + r".*?" + re.escape(end), document, flags=re.S)
        if match:
            existing[name] = match.group(0)
    existing.update(sections)
    ordered = [existing[name] for name in BENCHMARKS if name in existing]
    return HEADER + "\n" + "\n\n".join(ordered) + "\n"


@click.command(
    cls=interrupts.Command,
    interrupted="--output was not changed (sections are written once every benchmark asked for has run); "
    "rerun the same command, or `rotnet-bench NAME` for one benchmark",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("names", nargs=-1, type=click.Choice(sorted(BENCHMARKS)))
@click.option("--quick", is_flag=True, help="Fewer angles and repeats: a smoke run, not for the record.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="Markdown file whose sections are rewritten.",
)
@click.option("--print-only", is_flag=True, help="Print the sections instead of rewriting the file.")
def main(names: tuple[str, ...], quick: bool, output: Path, print_only: bool) -> None:
    """Run the benchmarks NAMES (default: all) and rewrite their sections of docs/benchmarks.md."""
    selected = list(names) or list(BENCHMARKS)
    command = shlex.join(["rotnet-bench", *sys.argv[1:]])
    sections = {}
    for name in selected:
        click.echo(f"running benchmark {name} ...", err=True)
        started = time.perf_counter()
        body = load(name)(quick=quick)
        sections[name] = render_section(name, body, command, time.perf_counter() - started)
        click.echo(sections[name])
    if print_only:
        return
    if output.is_symlink() or (output.exists() and not output.is_file()):
        raise click.ClickException(f"{output} is a symlink or not a regular file: it is left as it is")
    document = output.read_text() if output.exists() else ""
    if output.exists() and not any(_markers(name)[0] in document for name in BENCHMARKS):
        raise click.ClickException(
            f"{output} holds no rotnet-bench section markers, so it is not rotnet-bench's: it is left as "
            "it is; choose another --output"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output_rules.write_aside(output, update_document(document, sections))  # never through a link, never half
    click.echo(f"wrote {output}", err=True)


if __name__ == "__main__":
    main()
