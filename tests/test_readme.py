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
