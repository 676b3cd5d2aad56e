"""Config files: TOML keys validated against a command's parser; the command line wins."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from cpbench import config
from cpbench.cli import command_parser
from cpbench.errors import ConfigError


def _percents(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}")
    if any(not 0 <= p <= 100 for p in values):
        raise argparse.ArgumentTypeError("percents must lie in [0, 100]")
    return values


def build(prog_parsers: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """A top-level parser with one 'replay'-like subcommand, wired like the cpbench CLI."""
    top = argparse.ArgumentParser(prog="cpbench")
    subs = top.add_subparsers(dest="command")
    p = subs.add_parser("replay")
    p.add_argument("trace", help="trace file")
    p.add_argument("--url", default=None, help="target URL")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the rate")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--policy", choices=("fifo", "priority"), default="fifo")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.add_argument("--no-switch", dest="switch", action="store_false", help="keep the policy")
    p.add_argument("--percentiles", type=_percents, default="50,99",
                   help="comma-separated percents")
    p.add_argument("--header", action="append", default=None, help="extra header")
    p.add_argument("-o", "--output", default=None)
    config.add_config_option(p)
    p.set_defaults(func=lambda args: 0)
    if prog_parsers is not None:
        prog_parsers.append(p)
    return top


def write(tmp_path, text: str, name: str = "run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_file_supplies_values_and_command_line_overrides_it(tmp_path):
    cfg = write(tmp_path, 'trace = "from-file.arrow"\nrate-scale = 3\nworkers = 4\n'
                          'policy = "priority"\nquiet = true\nno-switch = true\n'
                          'percentiles = [50, 99.9]\nheader = ["X-A: 1"]\n')
    args = build().parse_args(["replay", "--config", cfg])
    assert args.trace == "from-file.arrow"
    assert args.rate_scale == 3.0 and isinstance(args.rate_scale, float)
    assert (args.workers, args.policy, args.quiet, args.switch) == (4, "priority", True, False)
    assert args.percentiles == (50.0, 99.9) and args.header == ["X-A: 1"]
    assert args.config == cfg
    # The command line wins wherever it speaks, before or after --config.
    args = build().parse_args(["replay", "cli.arrow", "--workers", "1", "--config", cfg,
                               "--policy", "fifo", "--percentiles", "90"])
    assert (args.trace, args.workers, args.policy, args.percentiles) == (
        "cli.arrow", 1, "fifo", (90.0,))
    assert args.rate_scale == 3.0  # not given on the command line: the file's value
    # Explicitly giving the default value on the command line still beats the file.
    args = build().parse_args(["replay", "--config", cfg, "--rate-scale", "1.0"])
    assert args.rate_scale == 1.0


def test_a_required_option_or_group_may_come_from_the_file(tmp_path):
    top = argparse.ArgumentParser(prog="cpbench")
    p = top.add_subparsers(dest="command").add_parser("synth")
    p.add_argument("--rate", type=float, required=True)
    extent = p.add_mutually_exclusive_group(required=True)
    extent.add_argument("--requests", type=int)
    extent.add_argument("--duration-s", type=float)
    config.add_config_option(p)
    cfg = write(tmp_path, "rate = 5\nrequests = 100\n")
    args = top.parse_args(["synth", "--config", cfg])
    assert (args.rate, args.requests, args.duration_s) == (5.0, 100, None)
    args = top.parse_args(["synth", "--config", cfg, "--rate", "7"])
    assert args.rate == 7.0
    with pytest.raises(SystemExit):  # without the file, still required
        top.parse_args(["synth"])


def test_without_config_the_defaults_are_untouched():
    args = build().parse_args(["replay", "t.arrow"])
    assert (args.rate_scale, args.workers, args.percentiles, args.config) == (
        1.0, 2, (50.0, 99.0), None)


def test_dashes_and_underscores_both_name_a_key(tmp_path):
    cfg = write(tmp_path, 'trace = "t"\nrate_scale = 2.5\n')
    assert build().parse_args(["replay", "--config", cfg]).rate_scale == 2.5


@pytest.mark.parametrize("text, needles", [
    ('trace = "t"\n\nrate-scael = 2\n', ["'rate-scael'", "line 3", "known keys", "rate-scale"]),
    ('trace = "t"\nworkers = "four"\n', ["'workers'", "line 2", "integer", "'four'"]),
    ('workers = 2.5\n', ["'workers'", "line 1", "integer"]),
    ('# c\nrate-scale = "fast"\n', ["'rate-scale'", "line 2", "number"]),
    ('quiet = "yes"\n', ["'quiet'", "line 1", "true or false"]),
    ('url = 8000\n', ["'url'", "line 1", "string"]),
    ('\npolicy = "lifo"\n', ["'policy'", "line 2", "fifo, priority", "'lifo'"]),
    ('percentiles = "50,120"\n', ["'percentiles'", "line 1", "[0, 100]"]),
    ('trace = "t"\n[replay]\nworkers = 2\n', ["'replay'", "line 2", "unknown key"]),
    ('rate-scale = true\n', ["'rate-scale'", "line 1", "boolean"]),
])
def test_bad_keys_name_the_key_and_the_line(tmp_path, text, needles):
    cfg = write(tmp_path, text)
    parsers: list[argparse.ArgumentParser] = []
    build(parsers)
    with pytest.raises(ConfigError) as info:
        config.apply_file(parsers[0], cfg)
    message = str(info.value)
    assert cfg in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_bad_file_through_the_parser_is_one_line_and_exit_2(tmp_path, capsys):
    cfg = write(tmp_path, 'trace = "t"\nworkers = "four"\n')
    with pytest.raises(SystemExit) as info:
        build().parse_args(["replay", "--config", cfg])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cpbench: error: config file ")
    assert "line 2" in err and "Traceback" not in err


def test_invalid_toml_and_missing_file(tmp_path):
    parsers: list[argparse.ArgumentParser] = []
    build(parsers)
    cfg = write(tmp_path, 'trace = "t"\nworkers = = 3\n')
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        config.apply_file(parsers[0], cfg)
    with pytest.raises(ConfigError, match="does not exist.*cpbench config --example"):
        config.apply_file(parsers[0], str(tmp_path / "absent.toml"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe = 1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.apply_file(parsers[0], str(tmp_path / "bin.toml"))


def test_key_lines_skip_multiline_strings_and_see_tables():
    text = 'a = """\nb = 1\n"""\nb = 2\n\n[c]\nd = 1\n'
    assert config.key_lines(text) == {"a": 1, "b": 4, "c": 6}


def test_namespace_from_checks_keyword_arguments_like_file_keys():
    parsers: list[argparse.ArgumentParser] = []
    build(parsers)
    ns = config.namespace_from(parsers[0], {"rate_scale": 2, "quiet": True},
                               source="replay()", positionals={"trace": "t.arrow"})
    assert (ns.trace, ns.rate_scale, ns.quiet, ns.workers, ns.percentiles) == (
        "t.arrow", 2.0, True, 2, (50.0, 99.0))
    with pytest.raises(ConfigError, match=r"replay\(\): unknown key 'speedup'"):
        config.namespace_from(parsers[0], {"speedup": 2}, source="replay()")


def test_example_of_a_real_command_loads_back_to_its_defaults(tmp_path):
    parser = command_parser("verify")
    text = config.example(command_parser("verify"), "verify")
    assert text.startswith("# cpbench verify configuration (TOML).")
    values, _ = config.load_file(write(tmp_path, text))
    assert values == {}  # verify has only positionals: all commented out
    with pytest.raises(ConfigError, match="no command 'nope'"):
        config.example(command_parser("nope"), "nope")
    assert parser.prog.endswith("verify")


@pytest.mark.parametrize("command", ["replay", "compare"])
def test_example_of_a_shipped_command_loads_back_to_its_defaults(tmp_path, command):
    from cpbench.cli import build_parser

    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    cfg = write(tmp_path, config.example(command_parser(command), command))
    plain = vars(top.parse_args([command, "t.arrow", "--policies", "fifo"]
                                if command == "compare" else [command, "t.arrow"]))
    assert config.apply_file(sub.choices[command], cfg)  # live keys, all of them valid
    loaded = vars(top.parse_args([command, "t.arrow", "--policies", "fifo"]
                                 if command == "compare" else [command, "t.arrow"]))
    assert loaded == plain


def test_example_of_a_configurable_command_parses_back_unchanged(tmp_path, monkeypatch):
    parsers: list[argparse.ArgumentParser] = []
    top = build(parsers)
    text = config.example(parsers[0], "replay")
    assert "# Use: cpbench replay --config replay.toml" in text
    assert "# target URL\n# url = " in text and "rate-scale = 1.0" in text
    assert "# trace = " in text  # the positional is documented, commented out
    cfg = write(tmp_path, text)
    values, _ = config.load_file(cfg)
    assert {"rate-scale", "workers", "policy", "quiet", "no-switch"} <= set(values)
    plain = build().parse_args(["replay", "t.arrow"])
    loaded = top.parse_args(["replay", "t.arrow", "--config", cfg])
    assert {**vars(loaded), "config": None, "func": None} == {**vars(plain), "func": None}


def test_cpbench_config_example_command():
    out = subprocess.run([sys.executable, "-m", "cpbench", "config", "--example", "verify"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("# cpbench verify configuration")
    bad = subprocess.run([sys.executable, "-m", "cpbench", "config", "--example", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("cpbench: error: no command 'nope'")
    assert "Traceback" not in bad.stderr
