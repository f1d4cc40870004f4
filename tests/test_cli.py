"""The ``ringbus`` command's conventions (docs/cli.md): --version, --help everywhere, settings from flags >
environment > config file > defaults, one-line errors and their exit codes.

Every run is a real ``python -m ringbus`` process in a temporary directory with a private HOME, so no
config file or RINGBUS_* variable of the machine leaks in.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ringbus import _config
from ringbus.broker.server import DEFAULT_ENDPOINT
from ringbus.cli import build_parser

COMMANDS = sorted(_config._commands(build_parser()))
TIMEOUT = 120.0  # bound on one command; none of them takes long


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGBUS_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"), **extra)
    return env


def ringbus(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringbus", *args], check=False, capture_output=True, text=True,
                          cwd=tmp_path, env=clean_env(tmp_path, **env), timeout=TIMEOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nobody() -> str:
    """A tcp:// endpoint nothing listens on."""
    return f"tcp://127.0.0.1:{free_port()}"


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ringbus: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- version and help --------------------------------------------------------------------

def test_version_is_the_installed_distributions(tmp_path: Path) -> None:
    result = ringbus(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ringbus {importlib.metadata.version('ringbus')} (")


def test_top_level_help_lists_every_command(tmp_path: Path) -> None:
    result = ringbus(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout
    assert "--config" in result.stdout and "--debug" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(tmp_path: Path, command: str) -> None:
    result = ringbus(tmp_path, command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: ringbus {command}"), result.stdout[:200]
    assert result.stderr == ""


# --- one line per error, exit codes ------------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["bench", "--rounds", "x"], "--rounds"),
    (["bench", "--scale", "0"], "--scale"),
    (["bench", "nonesuch"], "nonesuch"),
    (["stats", "--timeout", "soon"], "--timeout"),
    (["broker", "--fsync", "sometimes"], "--fsync"),
    (["stats", "--url", "nonsense"], "nonsense"),
    (["no-such-command"], "no-such-command"),
    ([], "COMMAND"),
])
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path: Path, args: list[str], named: str) -> None:
    result = ringbus(tmp_path, *args)
    assert result.returncode == _config.EXIT_USAGE
    assert named in one_error_line(result)


def test_an_unreachable_broker_is_one_line_and_exit_3(tmp_path: Path) -> None:
    url = nobody()
    result = ringbus(tmp_path, "stats", "--url", url, "--timeout", "0.3")
    assert result.returncode == _config.EXIT_UNAVAILABLE
    line = one_error_line(result)
    assert line.startswith("ringbus: error: stats: ") and url in line and "did not answer" in line


def test_a_runtime_failure_is_one_line_and_exit_1(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    result = ringbus(tmp_path, "broker", "--data", str(not_a_dir), "--bind", "tcp://127.0.0.1:0")
    assert result.returncode == _config.EXIT_FAILURE
    assert str(not_a_dir) in one_error_line(result)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tmp_path: Path, how: str) -> None:
    args = ["--debug"] if how == "flag" else []
    env = {"RINGBUS_DEBUG": "1"} if how == "env" else {}
    result = ringbus(tmp_path, *args, "stats", "--url", nobody(), "--timeout", "0.3", **env)
    assert result.returncode == _config.EXIT_UNAVAILABLE
    assert "Traceback (most recent call last)" in result.stderr and "PeerGone" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ringbus: error: stats: ")


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    # A long bench; interrupted once its first progress line shows it is inside the command.
    proc = subprocess.Popen([sys.executable, "-m", "ringbus", "bench", "core", "--scale", "50", "--progress",
                             "plain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=clean_env(tmp_path))
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("[1/"), first
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == _config.EXIT_INTERRUPTED
    assert "ringbus: interrupted" in rest and "Traceback" not in rest


# --- settings: flags > environment > config file > defaults ------------------------------

def stats_url(tmp_path: Path, *args: str, **env: str) -> str:
    """The broker URL `ringbus <args>` (a stats command) used, read from its one-line error: nothing listens."""
    result = ringbus(tmp_path, *args, **env)
    assert result.returncode == _config.EXIT_UNAVAILABLE, result.stderr
    return one_error_line(result).split("the broker at ")[1].split()[0]


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    from_file, from_env, from_flag = nobody(), nobody(), nobody()
    (tmp_path / "ringbus.toml").write_text(f'[stats]\nurl = "{from_file}"\ntimeout = 0.3\n')
    assert stats_url(tmp_path, "stats") == from_file
    assert stats_url(tmp_path, "stats", RINGBUS_URL=from_env) == from_env
    assert stats_url(tmp_path, "stats", "--url", from_flag, RINGBUS_URL=from_env) == from_flag


def test_config_file_locations(tmp_path: Path) -> None:
    top, section, named, home = nobody(), nobody(), nobody(), nobody()
    xdg = tmp_path / "xdg" / "ringbus"
    xdg.mkdir(parents=True)
    (xdg / "ringbus.toml").write_text(f'url = "{home}"\n')
    stats = ("stats", "--timeout", "0.3")
    assert stats_url(tmp_path, *stats) == home  # ~/.config/ringbus/ringbus.toml, top-level url
    (tmp_path / "ringbus.toml").write_text(f'url = "{top}"\n')
    assert stats_url(tmp_path, *stats) == top  # ./ringbus.toml comes first
    (tmp_path / "ringbus.toml").write_text(f'url = "{top}"\n[stats]\nurl = "{section}"\n')
    assert stats_url(tmp_path, *stats) == section  # a [command] section beats the top level
    other = tmp_path / "other.toml"
    other.write_text(f'[stats]\nurl = "{named}"\n')
    assert stats_url(tmp_path, "--config", str(other), *stats) == named
    assert stats_url(tmp_path, *stats, "--config", str(other)) == named
    assert stats_url(tmp_path, *stats, RINGBUS_CONFIG=str(other)) == named


@pytest.mark.parametrize("text, named", [
    ('[broker]\nfsync = "sometimes"\n', "[broker] fsync"),
    ("[stats]\ntimeout = true\n", "[stats] timeout"),
    ("[stats]\nno_such_option = 1\n", "no_such_option"),
    ("[borker]\ndata = 'x'\n", "[borker]"),
    ("port = 5\n", "'port'"),
    ("[pipe]\nbatch = 5\n", "[pipe]"),
    ("[stats\n", "ringbus.toml"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, text: str, named: str) -> None:
    (tmp_path / "ringbus.toml").write_text(text)
    if "[broker]" in text:  # refused before the broker starts
        result = ringbus(tmp_path, "broker", "--bind", "tcp://127.0.0.1:0", "--data", str(tmp_path / "d"))
    else:
        result = ringbus(tmp_path, "stats", "--url", nobody(), "--timeout", "0.3")
    assert result.returncode == _config.EXIT_USAGE, result.stderr
    line = one_error_line(result)
    assert "ringbus.toml" in line and named in line


def test_help_works_whatever_the_config_file_says(tmp_path: Path) -> None:
    (tmp_path / "ringbus.toml").write_text("[borker]\n")
    result = ringbus(tmp_path, "stats", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: ringbus stats"), result.stderr


def test_a_missing_named_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = ringbus(tmp_path, "--config", "nowhere.toml", "stats")
    assert result.returncode == _config.EXIT_USAGE
    assert "nowhere.toml" in one_error_line(result)


def _broker_ready_line(tmp_path: Path, *args: str, **env: str) -> str:
    """Start `ringbus broker` on a free port, return its ready line, stop it with SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "ringbus", "broker", "--bind", "tcp://127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=clean_env(tmp_path, **env))
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(TIMEOUT), "the broker printed nothing"
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, line
    return line


def test_broker_data_from_env_file_and_flag(tmp_path: Path) -> None:
    (tmp_path / "ringbus.toml").write_text(f'[broker]\ndata = "{tmp_path / "from-file"}"\nfsync = "never"\n')
    line = _broker_ready_line(tmp_path)
    assert f"data {tmp_path / 'from-file'}, fsync never" in line
    line = _broker_ready_line(tmp_path, RINGBUS_DATA=str(tmp_path / "from-env"))
    assert f"data {tmp_path / 'from-env'}, fsync never" in line
    line = _broker_ready_line(tmp_path, "--data", str(tmp_path / "from-flag"), "--fsync", "always",
                              RINGBUS_DATA=str(tmp_path / "from-env"))
    assert f"data {tmp_path / 'from-flag'}, fsync always" in line


# --- the same rules, in process ----------------------------------------------------------

def parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], **environ: str) -> Any:
    monkeypatch.chdir(tmp_path)
    env = {"HOME": str(tmp_path / "home"), **environ}
    return _config.parse_args(build_parser(), argv, environ=env)


def test_defaults_when_nothing_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(tmp_path, monkeypatch, ["stats"])
    assert args.url == DEFAULT_ENDPOINT and args.timeout == 5.0 and args.debug is False


def test_env_vars_apply_only_where_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RINGBUS_URL": "tcp://127.0.0.1:7", "RINGBUS_DATA": str(tmp_path / "d"),
           "RINGBUS_BIND": "tcp://127.0.0.1:8"}
    broker = parse(tmp_path, monkeypatch, ["broker"], **env)
    assert (broker.data, broker.bind) == (str(tmp_path / "d"), "tcp://127.0.0.1:8")
    assert parse(tmp_path, monkeypatch, ["stats"], **env).url == "tcp://127.0.0.1:7"
    assert parse(tmp_path, monkeypatch, ["bench"], **env).suite == "core"


def test_file_values_are_typed_like_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ringbus.toml").write_text('debug = true\n[bench]\nrounds = 3\nscale = "0.5"\njson = true\n'
                                           '[broker]\nretention_hours = 2\npeer-hwm = 10\n')
    bench = parse(tmp_path, monkeypatch, ["bench", "ipc"])
    assert (bench.rounds, bench.scale, bench.json, bench.debug) == (3, 0.5, True, True)
    assert parse(tmp_path, monkeypatch, ["bench", "--rounds", "9"]).rounds == 9
    broker = parse(tmp_path, monkeypatch, ["broker"])
    assert (broker.retention_hours, broker.peer_hwm) == (2.0, 10)


def test_passthrough_commands_get_settings_as_leading_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ringbus.http")
    (tmp_path / "ringbus.toml").write_text('[serve-http]\nqueue = "jobs2"\nallow-http-webhooks = true\n')
    args = parse(tmp_path, monkeypatch, ["serve-http", "--queue", "mine"], RINGBUS_URL="tcp://127.0.0.1:7")
    assert args.args == ["--queue", "jobs2", "--allow-http-webhooks", "--url", "tcp://127.0.0.1:7", "--queue", "mine"]
    from ringbus.http import build_parser as http_parser

    parsed = http_parser().parse_args(args.args)
    assert (parsed.queue, parsed.url, parsed.allow_http_webhooks) == ("mine", "tcp://127.0.0.1:7", True)


# --- docs/cli.md keeps up ----------------------------------------------------------------

def test_docs_name_every_command_and_flag() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    commands = _config._commands(build_parser())
    for name, sub in commands.items():
        assert f"## `ringbus {name}`" in doc, name
        parser = sub if not _config._passthrough(sub) else _config._passthrough_parser(name)
        options = _config._options(parser) if parser is not None else {}
        for option, action in options.items():
            if action.help != argparse.SUPPRESS:  # hidden test hooks
                assert f"--{option}" in doc, f"ringbus {name} --{option} is not in docs/cli.md"
    for var in [v.name for v in _config.ENVIRONMENT] + [_config.CONFIG_ENV, _config.DEBUG_ENV]:
        assert f"`{var}`" in doc, var
    for code in (_config.EXIT_OK, _config.EXIT_FAILURE, _config.EXIT_USAGE, _config.EXIT_UNAVAILABLE,
                 _config.EXIT_INTERRUPTED):
        assert f"\n| {code} |" in doc, code
