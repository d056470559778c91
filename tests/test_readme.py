"""The README and `--help` agree: every flag the README names is one that some command accepts."""

import re

from typer.testing import CliRunner

from conftest import ROOT
from safebasin.cli import app

COMMANDS = [[], ["train"], ["align"], ["eval"], ["sweep"], ["report"], ["demo"], ["basin"], ["runs", "ls"], ["runs", "show"]]


def test_every_flag_in_the_readme_exists():
    runner = CliRunner()
    helps = " ".join(runner.invoke(app, [*c, "--help"], env={"COLUMNS": "300"}).output for c in COMMANDS)
    accepted = set(re.findall(r"--[a-z][a-z0-9_-]*", helps))
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`[^`]*?(--[a-z][a-z0-9_-]*)", readme)) | set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", readme))
    not_ours = {"--no-deps", "--nproc_per_node", "--monitor-interval", "--standalone"}
    missing = sorted(named - accepted - not_ours)
    assert not missing, f"the README names flags no command accepts: {missing}"


def test_help_keeps_brackets_literal():
    out = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "300"}).output
    assert "safebasin[vllm]" in out


# what the test suite itself registers (test_plugins.py), present in this process when its tests ran first
TEST_PLUGINS = {"test-half-loss", "test-psv", "toy-prompts", "reply-length"}


def test_help_lists_every_registered_name_with_its_line_and_the_readme_names_only_those():
    """`train`, `eval` and `demo` --help list each registry (methods, data sets, benches and suites, scenarios), each
    name with its plug-in's one line; every name the README uses with --method/--data/--bench/demo is one of them,
    and every one of them appears in the README."""
    from safebasin import cli

    runner = CliRunner()
    readme = (ROOT / "README.md").read_text()
    for (command, param), (title, entries) in cli.LISTINGS.items():
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).output
        listing = out.split(title[0].upper() + title[1:] + ":", 1)[1]
        for name, about in entries():
            if name in TEST_PLUGINS:
                continue
            assert about and re.search(rf"^\s+{re.escape(name)}\s+{re.escape(about)}$", listing, re.M), (command, name)
            assert re.search(rf"(?<![\w:-]){re.escape(name)}(?![\w-])", readme), f"README never names {name!r} ({title})"
    used = {("train", "method"): r"--method[ =]([a-z][\w-]*)", ("train", "data"): r"--data[ =]([a-z][\w.-]*)",
            ("eval", "bench"): r"--bench[ =]([a-zA-Z][\w:.-]*)", ("demo", "scenario"): r"safebasin demo ([a-z]+)"}
    for key, pattern in used.items():
        known = {n for n, _ in cli.LISTINGS[key][1]()} - TEST_PLUGINS
        named = {n for n in re.findall(pattern, readme) if not n.endswith((".csv", ".json", ".jsonl", ".txt"))}
        assert named and named <= known, (key, sorted(named - known))
