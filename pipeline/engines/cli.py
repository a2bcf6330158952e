"""`rotnet-cluster`: a Flink (or Spark) session cluster on this machine, for rotnet-pipeline to run on.

    rotnet-cluster fetch flink     # once: Flink 1.19.3 from PyPI + Beam's job server from Maven Central
    rotnet-cluster start flink     # 1 JobManager + 2 TaskManagers on 127.0.0.1; prints the runner options
    rotnet-cluster status flink    # the processes, the REST API's view, the job server in the cache
    rotnet-cluster stop flink      # stops exactly the processes `start` started (by PID)

The cluster's folder (--dir, default ~/.cache/rotnet/clusters/ENGINE) holds its configuration, logs
and cluster.json (PIDs, ports). Exit status: 0 done, 1 failed (one line says why), 2 usage.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from pipeline import interrupts
from pipeline.engines import cluster, dist

ENGINE_ARGUMENT = click.argument("engine", type=click.Choice(sorted(dist.ENGINES)), default="flink")
DIR_OPTION = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="The cluster's folder (configuration, logs, PIDs). Default: ~/.cache/rotnet/clusters/ENGINE.",
)


def _directory(engine: str, directory: Path | None) -> Path:
    return directory or dist.cache_root() / "clusters" / engine


def _echo(line: str) -> None:
    click.echo(line, err=True)


def runner_options(engine: str, session: cluster.SessionCluster) -> str:
    if engine == "flink":
        return f"--runner FlinkRunner --flink_master {session.master}"
    return f"--runner SparkRunner --spark_master_url {session.master}"


@click.group(cls=interrupts.Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fetch, start, inspect and stop a Flink or Spark session cluster on 127.0.0.1."""


@main.command(
    interrupted="the download stopped; files already checked stay in the cache, the rest were never put "
    "in place: rerun the same command"
)
@ENGINE_ARGUMENT
@click.option("--verify", is_flag=True, help="Also re-check the SHA-256 of every cached file.")
def fetch(engine: str, verify: bool) -> None:
    """Download ENGINE from PyPI and Beam's job server from Maven Central into the cache (once)."""
    spec = dist.engine(engine)
    try:
        home, server = dist.fetch(spec, _echo)
    except dist.FetchError as error:
        raise click.ClickException(str(error)) from None
    if verify:
        damaged = dist.verify(home) + dist.verify(spec.job_server_dir)
        if damaged:
            raise click.ClickException(
                f"changed since fetched: {', '.join(damaged[:5])}; delete {home} and {spec.job_server_dir} and fetch again"
            )
    click.echo(f"{engine} {spec.version}: {home}\njob server: {server.describe()}")


@main.command(interrupted="the processes started so far were stopped: rerun the same command")
@ENGINE_ARGUMENT
@DIR_OPTION
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(1, 8), help="TaskManagers / Spark workers."
)
@click.option(
    "--timeout",
    default=cluster.START_TIMEOUT_S,
    show_default=True,
    type=float,
    help="Seconds to wait for the workers.",
)
def start(engine: str, directory: Path | None, workers: int, timeout: float) -> None:
    """Start a master and WORKERS workers (separate JVMs, free ports); print the runner options."""
    spec = dist.engine(engine)
    try:
        dist.fetch(spec, _echo)
        session = cluster.CLUSTERS[engine](_directory(engine, directory), workers=workers, log=_echo)
        started = time.monotonic()
        session.start(timeout)
    except (dist.FetchError, cluster.ClusterError) as error:
        raise click.ClickException(str(error).splitlines()[0]) from None
    _echo(f"started in {time.monotonic() - started:.0f} s; logs in {session.directory / 'log'}")
    click.echo(runner_options(engine, session))


@main.command(interrupted="some processes may still run: rerun the same command")
@ENGINE_ARGUMENT
@DIR_OPTION
def stop(engine: str, directory: Path | None) -> None:
    """Stop the processes `rotnet-cluster start` started from the cluster's folder."""
    session = cluster.CLUSTERS[engine].attach(_directory(engine, directory))
    alive = session.alive()
    session.stop()
    click.echo(
        f"stopped {len(alive)} process(es): {', '.join(f'{p.role} {p.pid}' for p in alive) or 'none running'}"
    )


@main.command(interrupted="nothing changed")
@ENGINE_ARGUMENT
@DIR_OPTION
def status(engine: str, directory: Path | None) -> None:
    """Print the cluster's processes, what its master reports and the cached job server. Exit 1 when
    the cluster is not running."""
    spec = dist.engine(engine)
    server = dist.job_server(spec)
    click.echo(
        f"cache: {dist.engine_home(spec) or 'not fetched'}; job server: {server.describe() if server else 'not fetched'}"
    )
    session = cluster.CLUSTERS[engine].attach(_directory(engine, directory))
    for process in session.processes:
        click.echo(
            f"{process.role:<14} PID {process.pid:<8} {'running' if process.alive() else 'gone'}  log {process.log}"
        )
    try:
        if engine == "flink":
            overview = session.rest("/overview")
            click.echo(
                f"Flink {overview['flink-version']} at {session.master}: {overview['taskmanagers']} TaskManagers, "
                f"{overview['slots-available']}/{overview['slots-total']} slots free, {overview['jobs-running']} jobs running"
            )
        else:
            state = session.rest("/json/")
            alive = sum(1 for worker in state["workers"] if worker["state"] == "ALIVE")
            click.echo(f"Spark master {session.master}: {alive} workers alive, status {state.get('status')}")
    except cluster.ClusterError as error:
        raise click.ClickException(f"not running: {error}") from None
    click.echo(runner_options(engine, session))


if __name__ == "__main__":
    main()
