from click.testing import CliRunner

from eventstream import __version__
from eventstream.cli import main


def test_esc_version_names_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_esc_unknown_command_is_one_clear_error() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code != 0
    assert "No such command" in result.output
