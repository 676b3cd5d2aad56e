"""What a new user meets first, through the real CLI: one-line errors (exit 2), outputs that
are created or refused plainly, and every example the `--help` texts print."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from cpbench.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, argv: list[str], needle: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


def test_argparse_errors_are_one_line_naming_the_help(capsys):
    err = _one_line_error(capsys, ["compare", "--policies", "fifo", "x.arrow", "--bogus"],
                          "unrecognized arguments: --bogus")
    assert "see cpbench compare --help" in err and "usage:" not in err
    err = _one_line_error(capsys, ["record", "synth", "--pattern", "posson", "--rate", "1",
                                   "--requests", "1", "-o", "x.arrow"], "invalid choice")
    assert "uniform" in err and "see cpbench record synth --help" in err


def test_sim_port_out_of_range_is_refused(capsys):
    _one_line_error(capsys, ["sim", "--port", "99999"], "a port is 0-65535")


@pytest.mark.parametrize("command", [
    ["run", "--requests", "5", "--rate", "5"],
    ["compare", "--policies", "fifo", str(ROOT / "traces" / "light.arrow")],
    ["sweep", "--rates", "5"],
    ["experiment", "--name", "latency"],
])
def test_existing_file_as_output_is_one_line_exit_2(command, tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    assert main([*command, "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is an existing file" in err, err
    assert target.read_text() == "mine"


def test_verify_bad_input_is_exit_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing"), str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    trace = ROOT / "traces" / "light.arrow"
    assert main(["verify", str(trace), str(tmp_path)]) == 2
    assert "is a file but not a run's manifest.json" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), str(tmp_path)]) == 2
    assert "holds no manifest.json" in capsys.readouterr().err


def test_record_synth_creates_the_directory_and_refuses_other_suffixes(tmp_path, capsys):
    out = tmp_path / "not" / "yet" / "x.arrow"
    assert main(["record", "synth", "--rate", "5", "--requests", "10", "-o", str(out)]) == 0
    assert out.is_file()
    assert main(["record", "synth", "--rate", "5", "--requests", "10",
                 "-o", str(tmp_path / "x.csv")]) == 2
    assert "name it *.arrow" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--rate", "-5", "--requests", "5"], "--rate must be requests/s > 0"),
    (["--rate", "5", "--requests", "0"], "--requests must be at least 1; got 0"),
    (["--rate", "5", "--requests", "5", "--priority-mix", "HIGH=-1"], "got HIGH=-1"),
    (["--rate", "5", "--requests", "5", "--input-tokens", "empirical:az.csv:ContextTokens"],
     "takes COLUMN input_tokens or output_tokens"),
])
def test_synth_messages_name_the_options(args, message, tmp_path, capsys):
    assert main(["record", "synth", *args, "-o", str(tmp_path / "x.arrow")]) == 2
    err = capsys.readouterr().err
    assert message in err and "rate_rps" not in err and "{" not in err, err


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, prefix + (name,))


def _examples(epilog: str | None) -> list[str]:
    """The command lines of an epilog, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in (epilog or "").splitlines():
        text = line.strip()
        if current:
            current += " " + text
        elif text.startswith("cpbench "):
            current = text
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        out.append(current.split("  #")[0].split(" # ")[0].strip())
        current = ""
    return out


def _commands(example: str) -> list[list[str]]:
    """The cpbench commands of one example line: split at `&&`/`|`, redirections dropped."""
    out, current = [], []
    tokens = shlex.split(example)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("&&", "|", ";"):
            out.append(current)
            current = []
        elif tok in (">", ">>", "<"):
            i += 1  # and its file
        else:
            current.append(tok)
        i += 1
    out.append(current)
    return [c[1:] for c in out if c and c[0] == "cpbench"]


def _config_example(command: str) -> str:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["config", "--example", command]) == 0
    return buf.getvalue()


def _all_examples() -> list[tuple[tuple[str, ...], str]]:
    return [(path, ex) for path, p in _subparsers(build_parser()) for ex in _examples(p.epilog)]


def test_help_texts_show_their_own_examples():
    examples = dict(_subparsers(build_parser()))
    for path in (("record", "import"), ("record", "capture"), ("record", "synth")):
        lines = _examples(examples[path].epilog)
        assert lines and all(line.startswith("cpbench " + " ".join(path)) for line in lines)
    synth_help = examples[("record", "synth")].format_help()
    assert "{uniform,poisson,gamma,burst,ramp}" in synth_help and "{llm,hybrid}" in synth_help
    assert "lognormal:128,0.6,512" in synth_help   # defaults shown, those of the shipped traces
    assert "{azure,mooncake,burstgpt,servegen}" in examples[("record", "import")].format_help()


@pytest.mark.parametrize("path, example", _all_examples(), ids=lambda x: str(x)[:60])
def test_every_help_example_parses(path, example, tmp_path, monkeypatch):
    """Every example every --help prints is a valid command line (files need not exist, but
    a --config file is read while parsing: the example that writes it runs first)."""
    monkeypatch.chdir(tmp_path)
    for argv in _commands(example):
        if "--config" in argv and argv[0] != "sim":
            toml = argv[argv.index("--config") + 1]
            Path(toml).write_text(_config_example(argv[0]))
        args = build_parser().parse_args(argv)
        assert getattr(args, "func", None) is not None


def test_help_examples_that_need_no_server_run(tmp_path, monkeypatch, capsys):
    """The examples that make files from files run for real (the synth ones, shortened)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "traces").symlink_to(ROOT / "traces")
    ran = 0
    for argv in (a for _, example in _all_examples() for a in _commands(example)):
        if argv[:2] == ["record", "synth"] or (argv[0] in ("info", "validate")
                                               and Path(argv[-1]).exists()):
            if "--duration-s" in argv:   # shortened: 60 s of arrivals are 10 here
                argv[argv.index("--duration-s") + 1] = "10"
            assert main(argv) == 0, (argv, capsys.readouterr().err)
            ran += 1
    assert ran >= 4


@pytest.mark.integration
def test_sage_cp_bench_compare_and_visualize_lines_work(tmp_path, capsys):
    """sage-cp-bench's `compare --mode llm --policies ... --requests N` (no trace file) and
    `visualize --input ... --output DIR` run here as they read."""
    out = tmp_path / "cmp"
    assert main(["compare", "--mode", "llm", "--policies", "fifo,priority", "--requests", "20",
                 "--rate", "40", "--seed", "3", "--drain-s", "0.2", "--resamples", "100",
                 "-o", str(out)]) == 0
    import json
    from cpbench.trace import read_trace, trace_metadata
    result = json.loads((out / "comparison.json").read_text())
    assert result["trace"] == str(out / "trace.arrow") and result["stats"]["paired_rows"] == 20
    meta = trace_metadata(read_trace(out / "trace.arrow"))
    assert meta["seed"] == 3 and meta["params"]["mode"] == "llm"
    charts = tmp_path / "charts"
    assert main(["visualize", "--input", str(out / "fifo"), str(out / "priority"),
                 "--output", str(charts)]) == 0
    assert (charts / "report.html").stat().st_size > 10_000 and (charts / "report.md").is_file()
    assert f"results: {out / 'comparison.json'}" in capsys.readouterr().out
