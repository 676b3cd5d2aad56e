"""The cpbench command frame: help, version, and the error contract."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cpbench import __version__
from cpbench.cli import COMMANDS, main
from cpbench.errors import CpbenchError
from support import run_cli




def test_help_lists_every_built_command_and_no_others():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout
    section = out.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    # Subcommand names stand alone at four spaces of indent (help text continues deeper).
    listed = [line.split()[0] for line in section.splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert sorted(listed) == sorted(COMMANDS)
    assert COMMANDS, "the CLI registers no command"


def test_console_script_and_module_agree():
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "cpbench"]
    assert script.value == "cpbench.cli:main"


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cpbench {__version__}"


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: cpbench" in capsys.readouterr().out


def test_cpbench_error_becomes_one_line_and_its_exit_status(monkeypatch, capsys):
    import argparse

    class Boom(CpbenchError):
        exit_status = 2

    def fail(args):
        raise Boom("trace column 'kind' has unknown value 'vision' at row 3")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args",
                        lambda self, argv=None: (argparse.Namespace(func=fail), []))
    assert main(["anything"]) == 2
    err = capsys.readouterr().err
    assert err == "cpbench: error: trace column 'kind' has unknown value 'vision' at row 3\n"


def test_unknown_command_is_a_usage_error():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr and "Traceback" not in out.stderr


def test_import_has_no_side_effects():
    code = ("import sys, asyncio; import cpbench; "
            "assert 'pynvml' not in sys.modules; assert 'uvloop' not in sys.modules; "
            "assert 'aiohttp' not in sys.modules; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_examples(name):
    out = run_cli(name, "--help")
    assert out.returncode == 0
    assert "cpbench " + name in out.stdout
