"""The ``ringbus`` command's conventions: settings from flags > environment > config file > defaults, one
line per error, and the exit codes (docs/cli.md).

Every subcommand gets them without code of its own: :func:`parse_args` reads the config file and the
environment into the chosen command's parser defaults (so a flag on the command line still wins), and
:func:`run` turns an exception into one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ringbus.errors import PeerGone, RingbusError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the same parser
    try:
        # the same module under another name, and absent where tomllib is (3.11+): mypy sees one or the other
        import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]  # no TOML parser: a config file is refused with a sentence

__all__ = [
    "ENVIRONMENT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "OneLineParser",
    "UsageError",
    "config_paths",
    "parse_args",
    "positive_float",
    "positive_int",
    "run",
    "version_text",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and failed (a broker's data dir in use, a case that raised)
EXIT_USAGE = 2  # a bad flag, environment or config value: nothing was done
EXIT_UNAVAILABLE = 3  # a broker or server that does not answer
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


@dataclass(frozen=True)
class EnvVar:
    name: str
    option: str  # the flag it stands for, without dashes
    commands: tuple[str, ...] | None  # None: every command that has the flag


ENVIRONMENT = (
    EnvVar("RINGBUS_URL", "url", None),
    EnvVar("RINGBUS_DATA", "data", ("broker",)),
    EnvVar("RINGBUS_BIND", "bind", ("broker",)),
)
CONFIG_ENV = "RINGBUS_CONFIG"  # a config file path; empty: read none
DEBUG_ENV = "RINGBUS_DEBUG"  # 1: tracebacks with the error line
CONFIG_NAME = "ringbus.toml"
TOP_LEVEL_KEYS = ("url", "debug")  # keys outside a [command] section
BUS_SCHEMES = ("memory", "tcp", "ipc", "redis", "rediss", "amqp", "amqps", "nats", "mqtt")

# Commands that hand their arguments to a parser of their own: settings become flags put in front of the
# user's (argparse keeps the last of a repeated flag, so the user's still win).
PASSTHROUGH_PARSERS = {"serve-http": "ringbus.http:build_parser", "demo": "ringbus.demo.run:build_parser"}


class UsageError(ValueError):
    """A value from a flag, the environment or the config file that the command cannot take."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``ringbus: error: ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"ringbus: error: {where}{message} (see `{self.prog} --help`)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def version_text() -> str:
    """``ringbus 0.1.0 (c core, Python 3.11.7)``: the installed distribution's version, as pip sees it."""
    from importlib.metadata import PackageNotFoundError, version

    import ringbus

    try:
        number = version("ringbus")
    except PackageNotFoundError:  # run from a source tree that was never installed
        number = ringbus.__version__
    return f"ringbus {number} ({ringbus.IMPLEMENTATION} core, Python {sys.version.split()[0]})"


# --- the config file ---------------------------------------------------------------------

def config_paths(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a config file is looked for when neither --config nor RINGBUS_CONFIG names one, first first."""
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return [Path(CONFIG_NAME), Path(config_home) / "ringbus" / CONFIG_NAME]


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token[len(flag) + 1:]
    return None


def _config_file(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    named = _flag_value(argv, "--config")
    if named is None:
        named = environ.get(CONFIG_ENV)
    if named is not None:
        if not named:
            return None
        if not Path(named).is_file():
            source = "--config" if _flag_value(argv, "--config") is not None else CONFIG_ENV
            raise UsageError(f"{source}: no config file at {named}")
        return Path(named)
    return next((path for path in config_paths(environ) if path.is_file()), None)


def _load(path: Path) -> dict[str, Any]:
    if tomllib is None:
        raise UsageError(f"{path}: reading a config file needs Python 3.11 (tomllib) or `pip install tomli`")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: {exc}") from None


# --- from settings to parser defaults ----------------------------------------------------

def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _passthrough(sub: argparse.ArgumentParser) -> bool:
    return "-" not in sub.prefix_chars


def _command_of(argv: Sequence[str], commands: Mapping[str, argparse.ArgumentParser]) -> str | None:
    """The subcommand argv names: its first word that is not an option or the value of --config."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--config":
            skip = True
        elif not token.startswith("-"):
            return token if token in commands else None
    return None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The settable options of a parser by long name without dashes ("retention-hours")."""
    settable = (argparse._StoreAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, settable):
            for flag in action.option_strings:
                if flag.startswith("--"):
                    out[flag[2:]] = action
    return out


def _convert(action: argparse.Action, value: Any, source: str) -> Any:
    """The value a setting gives the action's dest, checked as argparse checks a flag."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f"{source}: expected true or false, got {value!r}")
        return action.const if value else action.default
    if isinstance(value, (bool, list, dict)) or action.nargs not in (None, "?"):
        raise UsageError(f"{source}: expected a single value, got {value!r}")
    converted: Any = str(value)
    if action.type is not None:
        try:
            converted = action.type(converted)  # type: ignore[operator]  # our parsers' types are callables
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UsageError(f"{source}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise UsageError(f"{source}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def _settings(command: str, parser: argparse.ArgumentParser, config: Mapping[str, Any], path: Path | None,
              environ: Mapping[str, str]) -> dict[str, tuple[argparse.Action, Any, Any]]:
    """option -> (action, converted value, raw value), later sources overriding earlier: file top level,
    file [command] section, environment."""
    options = _options(parser)
    found: dict[str, tuple[argparse.Action, Any, Any]] = {}

    def take(option: str, raw: Any, source: str) -> None:
        value = _convert(options[option], raw, source)
        if option == "url":
            _check_url(value, source)
        found[option] = (options[option], value, raw)

    if "url" in config and "url" in options:
        take("url", config["url"], f"{path} url")
    section = config.get(command, {})
    for key, raw in section.items():
        option = key.replace("_", "-")
        if option not in options or option in ("help", "config", "debug"):
            raise UsageError(f"{path} [{command}]: unknown setting {key!r} (`ringbus {command} --help` lists the "
                             "options; a key is a flag without its dashes)")
        take(option, raw, f"{path} [{command}] {key}")
    for var in ENVIRONMENT:
        if environ.get(var.name) and var.option in options and (var.commands is None or command in var.commands):
            take(var.option, environ[var.name], var.name)
    return found


def _check_file(config: Mapping[str, Any], path: Path, commands: Mapping[str, argparse.ArgumentParser]) -> None:
    for key, value in config.items():
        if isinstance(value, dict):
            if key not in commands:
                raise UsageError(f"{path}: unknown section [{key}] (sections are commands: {', '.join(commands)})")
            if _passthrough(commands[key]) and key not in PASSTHROUGH_PARSERS:
                raise UsageError(f"{path}: [{key}]: `ringbus {key}` takes its settings from flags only")
        elif key not in TOP_LEVEL_KEYS:
            raise UsageError(f"{path}: unknown top-level setting {key!r} (only {', '.join(TOP_LEVEL_KEYS)}; "
                             "put a command's settings in its [section])")
    if "debug" in config and not isinstance(config["debug"], bool):
        raise UsageError(f"{path} debug: expected true or false, got {config['debug']!r}")


def _passthrough_parser(command: str) -> argparse.ArgumentParser | None:
    spec = PASSTHROUGH_PARSERS.get(command)
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    try:
        parser: argparse.ArgumentParser = getattr(importlib.import_module(module), name)()
        return parser
    except ImportError:  # its extra is not installed: the command itself will say so
        return None


def _as_flags(settings: Mapping[str, tuple[argparse.Action, Any, Any]]) -> list[str]:
    flags: list[str] = []
    for option, (_action, _, raw) in settings.items():
        if isinstance(raw, bool):
            flags += [f"--{option}"] if raw else []
        else:
            flags += [f"--{option}", str(raw)]
    return flags


def _check_url(url: Any, source: str = "--url") -> None:
    if isinstance(url, str) and urlsplit(url).scheme not in BUS_SCHEMES:
        raise UsageError(f"{source}: {url!r} is not a bus URL: expected one of "
                         f"{', '.join(s + '://' for s in BUS_SCHEMES)} (e.g. tcp://127.0.0.1:5555)")


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def install(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --config and --debug to the command and to every subcommand that parses its own flags here."""
    if any("--config" in action.option_strings for action in parser._actions):
        return parser
    config_help = (f"a TOML config file (default: ./{CONFIG_NAME}, then ~/.config/ringbus/{CONFIG_NAME}; "
                   f"${CONFIG_ENV} too; an empty path reads none)")
    debug_help = f"show the traceback with an error (also ${DEBUG_ENV}=1)"
    parser.add_argument("--config", metavar="PATH", help=config_help)
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for sub in _commands(parser).values():
        if not _passthrough(sub):
            sub.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
            sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """Parse argv with the config file's and the environment's settings as the chosen command's defaults.

    A bad setting exits with code 2 and one line naming where it came from (like a bad flag does).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    install(parser)
    commands = _commands(parser)
    command = _command_of(argv, commands)
    prefix: list[str] = []
    config: dict[str, Any] = {}
    helping = any(token in ("-h", "--help", "--version") for token in argv)  # help works whatever the file says
    try:
        path = None if helping else _config_file(argv, environ)
        if path is not None:
            config = _load(path)
            _check_file(config, path, commands)
        if command is not None:
            sub = commands[command]
            target = _passthrough_parser(command) if _passthrough(sub) else sub
            if target is not None:
                settings = _settings(command, target, config, path, environ)
                if target is sub:
                    sub.set_defaults(**{action.dest: value for action, value, _ in settings.values()})
                else:
                    prefix = _as_flags(settings)
        args = parser.parse_args(argv)
        if prefix:
            args.args = prefix + list(args.args)
        _check_url(getattr(args, "url", None))
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"ringbus: error: {command + ': ' if command else ''}{exc}\n")
    args.debug = bool(getattr(args, "debug", False) or config.get("debug") or _truthy(environ.get(DEBUG_ENV)))
    return args


# --- from an exception to one line and an exit code --------------------------------------

def classify(exc: BaseException) -> int:
    """The exit code an exception means (docs/cli.md, "Exit codes")."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, PeerGone):
        return EXIT_UNAVAILABLE
    if isinstance(exc, RingbusError):
        return EXIT_FAILURE
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, ValueError):
        return EXIT_USAGE
    return EXIT_FAILURE


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, (RingbusError, UsageError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand's handler; an exception becomes one line on stderr and its exit code."""
    try:
        return int(handler(args))
    except BrokenPipeError:  # `ringbus bench | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return EXIT_OK
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure becomes one line and a code
        code = classify(exc)
        if args.debug:
            traceback.print_exc()
        if code == EXIT_INTERRUPTED:
            print("ringbus: interrupted", file=sys.stderr)
            return code
        hint = "" if args.debug or isinstance(exc, (RingbusError, OSError, ValueError)) else \
            f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        print(f"ringbus: error: {args.command}: {_one_line(exc)}{hint}", file=sys.stderr)
        return code
