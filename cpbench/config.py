"""Run configuration files: TOML holding any option of a command, under the command line.

``cpbench replay|run|compare|experiment --config FILE`` reads a flat TOML table whose keys are
the command's own options (``max-concurrency`` or ``max_concurrency``) and positionals
(``trace``). The file only supplies *defaults*: whatever the command line says wins, never the
reverse. Every key is checked against the command's argparse parser, so the file accepts
exactly what the command line accepts; an unknown key or a value of the wrong type is a
``ConfigError`` that names the key, the file and the line.

The same validation turns the keyword arguments of the Python API (``cpbench.replay(trace,
rate_scale=2.0)``) into the namespace the command's entry point takes (``namespace_from``).
This module hands callers a plain ``argparse.Namespace``; it imports nothing of cpbench above
``errors`` at module level.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from cpbench.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_OPTION = "--config"
# Actions a file must not set: they are about the invocation, not the run.
_SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
_SKIPPED_DESTS = frozenset({"config", "func", "command", "help", "version"})
# A key at the start of a line: bare (a-z, 0-9, _ and -) or quoted.
_KEY_LINE = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*(?:=|\.)""")
_TABLE_LINE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")


# --- reading a file ------------------------------------------------------------------------------

def load_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a TOML config file.

    Returns
    -------
    values, lines
        The top-level table, and the 1-based line on which each top-level key is defined
        (tomllib gives no positions, so the lines come from a scan of the text).

    Raises
    ------
    ConfigError
        The file is missing, unreadable, not UTF-8 or not valid TOML (the message carries
        the parser's line and column).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist; "
                          "write one with 'cpbench config --example COMMAND'") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {name} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {name} is not valid TOML: {exc}") from None
    return values, key_lines(text)


def key_lines(text: str) -> dict[str, int]:
    """The line of each top-level key (``key = ...``, ``key.sub = ...`` or ``[key]``).

    Lines inside multi-line strings are skipped, so text that merely looks like a key there
    cannot shadow the real definition.
    """
    lines: dict[str, int] = {}
    in_table = False
    quote: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if quote is not None:
            if line.count(quote) % 2 == 1:
                quote = None
            continue
        table = _TABLE_LINE.match(line)
        if table:
            in_table = True
            top = table.group(1).split(".", 1)[0].strip().strip("\"'")
            lines.setdefault(top, number)
            continue
        match = None if in_table else _KEY_LINE.match(line)
        if match:
            key = next(g for g in match.groups() if g is not None)
            lines.setdefault(key, number)
        for delimiter in ('"""', "'''"):
            if line.count(delimiter) % 2 == 1:
                quote = delimiter
                break
    return lines


# --- validating against a command's parser ------------------------------------------------------

def settable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's actions a file may set, by every name a key may use.

    A key may be the destination (``max_concurrency``) or a long option without its dashes
    (``max-concurrency``).
    """
    names: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, _SKIPPED_ACTIONS) or action.dest in _SKIPPED_DESTS:
            continue
        if action.dest == argparse.SUPPRESS:
            continue
        names[action.dest] = action
        names[action.dest.replace("_", "-")] = action
        for option in action.option_strings:
            if option.startswith("--"):
                names[option[2:]] = action
    return names


def convert(parser: argparse.ArgumentParser, values: Mapping[str, Any], *,
            source: str, lines: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Check ``values`` against ``parser`` and convert them to what parsing would produce.

    Parameters
    ----------
    parser
        The command's parser (for example the ``replay`` subparser).
    values
        Option name → value, from a TOML file or from keyword arguments.
    source
        What to call the origin in error messages (a file name, ``replay()``).
    lines
        Key → line in ``source``; each error then names the line.

    Returns
    -------
    dict
        Destination → converted value, ready for ``parser.set_defaults`` or a namespace.

    Raises
    ------
    ConfigError
        A key the command does not have, a value of the wrong type or outside the choices.
    """
    actions = settable_actions(parser)
    out: dict[str, Any] = {}
    for key, value in values.items():
        where = _where(source, key, lines)
        action = actions.get(key)
        if action is None:
            known = ", ".join(sorted({_key_name(a) for a in actions.values()
                                      if a.help != argparse.SUPPRESS}))
            raise ConfigError(f"{where}: unknown key '{key}' for 'cpbench {_prog(parser)}'; "
                              f"known keys: {known}")
        if action.dest in out:
            raise ConfigError(f"{where}: key '{key}' sets '{action.dest}' a second time")
        out[action.dest] = _convert_value(action, key, value, where)
    return out


def _where(source: str, key: str, lines: Mapping[str, int] | None) -> str:
    line = (lines or {}).get(key)
    return f"{source} line {line}" if line else source


def _prog(parser: argparse.ArgumentParser) -> str:
    return parser.prog.split(" ", 1)[1] if " " in parser.prog else parser.prog


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _convert_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be true or false; got {_kind(value)} "
                              f"{value!r}")
        # store_false options keep their meaning: `no-switch = true` means --no-switch given.
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, (argparse._StoreConstAction, argparse._CountAction)):
        if isinstance(action, argparse._CountAction) and type(value) is int and value >= 0:
            return value
        if isinstance(action, argparse._StoreConstAction) and isinstance(value, bool):
            return action.const if value else action.default
        wanted = "a count" if isinstance(action, argparse._CountAction) else "true or false"
        raise ConfigError(f"{where}: key '{key}' must be {wanted}; got {_kind(value)} {value!r}")
    many = action.nargs in ("*", "+") or (isinstance(action.nargs, int) and action.nargs > 1) \
        or isinstance(action, argparse._AppendAction)
    if many:
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise ConfigError(f"{where}: key '{key}' needs at least one value")
        return [_one(action, key, item, where) for item in items]
    if isinstance(value, list) and _takes_comma_list(action):
        # A comma-separated option (--policies a,b) may be written as a TOML array.
        value = ",".join(str(_scalar_text(action, key, item, where)) for item in value)
    return _one(action, key, value, where)


def _takes_comma_list(action: argparse.Action) -> bool:
    return "comma" in (action.help or "").lower() or "," in str(action.metavar or "")


def _scalar_text(action: argparse.Action, key: str, value: Any, where: str) -> str:
    if isinstance(value, (list, dict)) or isinstance(value, bool):
        raise ConfigError(f"{where}: key '{key}' got {_kind(value)} {value!r} inside an array")
    return str(value)


def _one(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """One value, typed as argparse would type it from the command line."""
    kind = action.type
    if isinstance(value, (dict, list)) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: key '{key}' expects {_expected(kind)}; got {_kind(value)} "
                          f"{_short(value)}")
    if kind is int:
        if type(value) is not int:
            raise ConfigError(f"{where}: key '{key}' expects an integer; got {_kind(value)} "
                              f"{value!r}")
        result: Any = value
    elif kind is float:
        if type(value) not in (int, float):
            raise ConfigError(f"{where}: key '{key}' expects a number; got {_kind(value)} "
                              f"{value!r}")
        result = float(value)
    elif kind is None or kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' expects a string; got {_kind(value)} "
                              f"{value!r} (quote it: {key} = \"{value}\")")
        result = value
    else:
        # A custom parser (seconds-or-count, a percent list, a path): give it the text the
        # command line would have given it, and report its complaint with the key and line.
        try:
            result = kind(value if isinstance(value, str) else str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: key '{key}' = {value!r} is invalid: {exc}") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise ConfigError(f"{where}: key '{key}' must be one of {choices}; got {value!r}")
    return result


def _expected(kind: Any) -> str:
    return {int: "an integer", float: "a number", None: "a string", str: "a string"}.get(
        kind, "a single value")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the command line ---------------------------------------------------------------------------

def _example_key(parser: argparse.ArgumentParser) -> str:
    """A ``key = value`` line for this parser's help: its first option that takes a number
    and has a default, so the example is one the command accepts."""
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and action.type in (int, float) and action.default is not None:
            return f"{long[0][2:]} = {action.default}"
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and action.nargs != 0 and long[0] != "--help":
            return f'{long[0][2:]} = "..."'
    return 'key = "value"'


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Give a command ``--config FILE``: the file's keys become the command's defaults.

    Call it once in the command's ``register`` after its other options are added. The parser
    then reads the file *before* parsing, so the command line overrides the file, required
    positionals (``trace``) may come from the file, and a bad file stops the command with one
    line (``cpbench: error: ...``) and exit status 2, never a traceback.
    """
    parser.add_argument(CONFIG_OPTION, metavar="FILE", default=None,
                        help="TOML file of this command's options (keys as the long options, "
                             f"e.g. {_example_key(parser)}); the command line overrides it; "
                             "see 'cpbench config --example "
                             f"{_prog(parser)}'")
    original = parser.parse_known_args

    def parse_known_args(args: list[str] | None = None, namespace: Any = None) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        path = config_path(argv)
        if path is None:
            return original(argv, namespace)
        saved = _snapshot(parser)
        try:
            try:
                apply_file(parser, path)
            except ConfigError as exc:
                parser.exit(exc.exit_status, f"cpbench: error: {exc}\n")
            return original(argv, namespace)
        finally:
            _restore(parser, saved)  # the file applies to this parse only

    # argparse calls the subparser's parse_known_args by attribute, so an instance attribute
    # is the one hook that sees the subcommand's own argument list without touching cli.main.
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def _snapshot(parser: argparse.ArgumentParser) -> tuple:
    return (dict(parser._defaults),
            [(a, a.default, a.required, a.nargs) for a in parser._actions],
            [(g, g.required) for g in parser._mutually_exclusive_groups])


def _restore(parser: argparse.ArgumentParser, saved: tuple) -> None:
    defaults, actions, groups = saved
    parser._defaults.clear()
    parser._defaults.update(defaults)
    for action, default, required, nargs in actions:
        action.default, action.required, action.nargs = default, required, nargs
    for group, required in groups:
        group.required = required


def config_path(argv: list[str]) -> str | None:
    """The value of the last ``--config FILE`` / ``--config=FILE`` in ``argv`` (or None)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == CONFIG_OPTION and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(CONFIG_OPTION + "="):
            found = arg.split("=", 1)[1]
    return found


def apply_file(parser: argparse.ArgumentParser, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``path``, validate it against ``parser`` and install its values as defaults.

    Returns the converted values (destination → value). Positionals the file sets become
    optional on the command line, so ``cpbench replay --config run.toml`` works when the file
    names the trace.
    """
    values, lines = load_file(path)
    converted = convert(parser, values, source=f"config file {os.fspath(path)}", lines=lines)
    for action in parser._actions:
        if action.dest not in converted:
            continue
        if not action.option_strings:
            if action.nargs is None:
                action.nargs = "?"
            elif action.nargs == "+":
                action.nargs = "*"
        action.required = False
    for group in parser._mutually_exclusive_groups:
        # `--requests N | --duration-s S` (required) is satisfied by either key in the file.
        if any(a.dest in converted for a in group._group_actions):
            group.required = False
    parser.set_defaults(**converted)
    return converted


def namespace_from(parser: argparse.ArgumentParser, options: Mapping[str, Any], *,
                   source: str, positionals: Mapping[str, Any] | None = None
                   ) -> argparse.Namespace:
    """The namespace ``parser`` would produce from its defaults plus ``options``.

    This is how the Python API reuses a command's entry point: keyword arguments are checked
    exactly like config-file keys (unknown names and wrong types raise ``ConfigError`` naming
    ``source``). ``positionals`` are set as given, without conversion.
    """
    given = dict(options)
    path = given.pop("config", None)
    converted: dict[str, Any] = {}
    if path is not None:
        values, lines = load_file(path)
        converted.update(convert(parser, values, source=f"config file {path}", lines=lines))
    # None means "the command's default" (TOML has no null, so only keyword arguments have it).
    unset = {k for k, v in given.items() if v is None}
    converted.update(convert(parser, {k: v for k, v in given.items() if k not in unset},
                             source=source))
    convert(parser, {k: "" for k in unset if k not in settable_actions(parser)}, source=source)
    supplied = set(converted) | set(positionals or {})
    missing = [_key_name(a).replace("-", "_") for a in parser._actions
               if a.required and a.option_strings and a.dest not in supplied]
    if missing:
        raise ConfigError(f"{source}: missing required option(s) {', '.join(missing)}")
    namespace = argparse.Namespace()
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help", "version"):
            continue
        default = action.default
        if isinstance(default, str) and action.type not in (None, str):
            default = action.type(default)
        setattr(namespace, action.dest, default)
    for key, value in parser._defaults.items():
        setattr(namespace, key, value)
    for key, value in converted.items():
        setattr(namespace, key, value)
    for key, value in (positionals or {}).items():
        setattr(namespace, key, value)
    namespace.config = os.fspath(path) if path is not None else None
    return namespace


# --- the commented example ----------------------------------------------------------------------

def example(parser: argparse.ArgumentParser, command: str) -> str:
    """A commented TOML config file for ``cpbench COMMAND`` (its ``parser``): every option with
    its help.

    Options with a default are written live (``rate-scale = 1.0``), so the file loads as it is
    and changes nothing; options without one are commented out with a placeholder.
    """
    takes_config = any(CONFIG_OPTION in a.option_strings for a in parser._actions)
    out = [f"# cpbench {command} configuration (TOML).",
           f"# Use: cpbench {command} --config {command}.toml [options]" if takes_config
           else f"# (cpbench {command} has no --config option; the keys still document it)",
           "# Options given on the command line override this file.",
           "# Keys are the command's long options; lists may be TOML arrays.", ""]
    seen: set[str] = set()
    for action in parser._actions:
        if (isinstance(action, _SKIPPED_ACTIONS) or action.dest in _SKIPPED_DESTS
                or action.dest in seen or action.help == argparse.SUPPRESS):
            continue
        seen.add(action.dest)
        key = _key_name(action)
        for line in _wrap(_help_text(action)):
            out.append(f"# {line}")
        value = _toml_value(action)
        if value is not None and not _round_trips(action, key, value):
            out.append(f"# {key} = {value}")
        elif value is None:
            out.append(f"# {key} = {_placeholder(action)}")
        else:
            out.append(f"{key} = {value}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _key_name(action: argparse.Action) -> str:
    for option in action.option_strings:
        if option.startswith("--"):
            return option[2:]
    return action.dest.replace("_", "-")


def _help_text(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default))
    text = text.replace("%(prog)s", "cpbench").replace("%%", "%")
    if action.choices:
        text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    if not action.option_strings:
        text += " [positional; usually given on the command line]"
    return text.strip() or action.dest


def _wrap(text: str, width: int = 92) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _toml_value(action: argparse.Action) -> str | None:
    if not action.option_strings:
        return None
    if isinstance(action, argparse._StoreTrueAction):
        return "false"
    if isinstance(action, argparse._StoreFalseAction):
        return "false"
    default = action.default
    if default is None or default is argparse.SUPPRESS:
        return None
    return _toml_literal(default)


def _toml_literal(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        items = [_toml_literal(v) for v in value]
        return None if None in items else "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    return None


def _round_trips(action: argparse.Action, key: str, literal: str) -> bool:
    """Whether ``key = literal`` loads back to the option's default (else it is commented)."""
    try:
        parsed = tomllib.loads(f"v = {literal}")["v"]
        value = _convert_value(action, key, parsed, "example")
    except (ConfigError, tomllib.TOMLDecodeError):
        return False
    default = action.default
    if isinstance(action, argparse._StoreTrueAction):
        default = False if default is None else default
    if isinstance(default, str) and action.type not in (None, str):
        try:
            default = action.type(default)
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            return False
    return value == default


def _placeholder(action: argparse.Action) -> str:
    if action.type in (int, float):
        # Not a literal: an invented number would look like a recommendation if uncommented.
        return "<integer>" if action.type is int else "<number>"
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if action.nargs in ("*", "+"):
        return f'["{metavar}"]'
    return json.dumps(metavar)
