"""schemas.angles: the one --angles syntax of rotnet-pipeline, rotnet-train and rotnet-evaluate."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from schemas.angles import AngleSyntaxError, describe_angles, parse_angles


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", tuple(range(360))),
        ("", tuple(range(360))),
        ("0,90,180,270", (0, 90, 180, 270)),
        ("0-359:90", (0, 90, 180, 270)),
        ("350-359:5, 0", (0, 350, 355)),
        ("0-3", (0, 1, 2, 3)),
        (" 7 ", (7,)),
        ("90,90,0", (0, 90)),
    ],
)
def test_parse_angles(text: str, expected: tuple[int, ...]) -> None:
    assert parse_angles(text) == expected


@pytest.mark.parametrize("text", ["360", "10-5", "0-10:0", "x", "1.5", "-5", "0-360"])
def test_parse_angles_refuses_bad_text(text: str) -> None:
    with pytest.raises(AngleSyntaxError):
        parse_angles(text)


def test_python_range_syntax_is_refused_with_the_spelling_of_the_same_angles() -> None:
    with pytest.raises(AngleSyntaxError, match="write '0-359:10' for the same angles") as raised:
        parse_angles("0:360:10")
    suggested = str(raised.value).split("write '")[1].split("'")[0]
    assert parse_angles(suggested) == tuple(range(0, 360, 10))


def test_a_huge_range_is_refused_before_it_is_expanded() -> None:
    # 0-300000000 would be 300 million integers: refused from its END, not after expanding it.
    with pytest.raises(AngleSyntaxError, match="goes past 359"):
        parse_angles("0-300000000")
    with pytest.raises(AngleSyntaxError):
        parse_angles("0-" + "9" * 40)


def test_describe_angles_uses_the_same_syntax() -> None:
    assert describe_angles(list(range(0, 360, 10))) == "0-350:10 (36 angles)"
    assert parse_angles("0-350:10") == tuple(range(0, 360, 10))
    assert describe_angles(list(range(360))) == "0-359 (360 angles)"
    assert describe_angles([0, 90, 180, 270]) == "0-270:90 (4 angles)"
    assert describe_angles([0, 7]) == "0,7"


def test_every_command_reads_0_359_90_as_the_same_four_angles(tmp_path, monkeypatch) -> None:
    """rotnet-pipeline, rotnet-train and rotnet-evaluate --angles 0-359:90 all mean 0, 90, 180, 270."""
    from pipeline import cli as pipeline_cli
    from pipeline import job
    from tests.factories import write_records_dir
    from trainer import cli as train_cli
    from trainer import evaluate, evaluate_cli, train

    seen = {}

    class CapturedError(Exception):
        pass

    def capture(name, value):
        seen[name] = tuple(value)
        raise CapturedError

    monkeypatch.setattr(job, "run", lambda config, *_, **__: capture("pipeline", config.angles_degrees))
    monkeypatch.setattr(train, "run", lambda config, **_: capture("train", config.angles))
    monkeypatch.setattr(evaluate, "evaluate", lambda *_, angles, **__: capture("evaluate", angles))
    records = tmp_path / "records"
    write_records_dir(records, angles=(0, 90, 180, 270))
    commands = {
        "pipeline": (pipeline_cli.main, ["--dataset", "mnist", "--output-dir", str(tmp_path / "o")]),
        "train": (train_cli.main, ["--records", str(records), "--output", str(tmp_path / "run")]),
        "evaluate": (evaluate_cli.main, ["--model", str(records), "--records", str(records)]),
    }
    for name, (command, arguments) in commands.items():
        result = CliRunner().invoke(command, [*arguments, "--angles", "0-359:90"])
        assert isinstance(result.exception, CapturedError), (name, result.output)
    assert seen == dict.fromkeys(commands, (0, 90, 180, 270))
    # The old trainer spelling is refused by all three with the new one, never read differently.
    for name, (command, arguments) in commands.items():
        result = CliRunner().invoke(command, [*arguments, "--angles", "0:360:90"])
        assert result.exit_code == 2, name
        assert "write '0-359:90' for the same angles" in result.output, name
