"""Every command of the README's ```bash blocks runs as written.

The fast test runs, in README order in one folder, every `bitalloc` command that needs no real
model (solve, pareto, report, export of the JSON/text formats, mcu plan); `p.json` there is a
copy of the embedded SmolLM2 fisher profile, which is what the README's
`bitalloc profile --model smollm2 --estimator fisher ... --out p.json` writes. Commands whose
inputs come from model commands (m.csv, kv.json, ...) are left to the slow test, which runs
every command, model ones included (and the scripts and examples the blocks name).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitalloc.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = ("pip install", "scripts/setup.sh", "llama-quantize", "...", "postgresql://")  # installs, external tools, placeholders
MODEL = re.compile(r"--model |--format gguf|^python |^PYTHONPATH=|--runner |--solver optuna")
SLOW = re.compile(r"--time-limit 10|^bitalloc pareto --budgets 2.5:6")  # cheap but seconds each: slow test only
INPUTS = ("--profile", "--allocation", "--device-profile", "--plan", "--packed")


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks: continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = re.sub(r"\s+#.*$", "", cmd).strip()
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
    return out


def runnable(cmd: str) -> bool:
    return not any(s in cmd for s in NOT_RUN) and (cmd.startswith(("bitalloc ", "python ", "PYTHONPATH=")))


def inputs_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in INPUTS]


def test_readme_has_commands_and_every_one_is_classified():
    cmds = readme_commands()
    assert len(cmds) > 20
    skipped = [c for c in cmds if not runnable(c)]
    assert all(any(s in c for s in NOT_RUN) for c in skipped), skipped


def test_readme_commands_without_models_run_as_written(tmp_path, monkeypatch, capsys):
    from bitalloc.data import default_profile_path

    shutil.copy(default_profile_path(), tmp_path / "p.json")
    monkeypatch.chdir(tmp_path)
    ran, later = [], []
    for cmd in readme_commands():
        if not runnable(cmd) or MODEL.search(cmd) or SLOW.search(cmd):
            continue
        argv = shlex.split(cmd)[1:]
        if any(not Path(f).exists() for f in inputs_of(argv)):
            later.append(cmd)  # its input is made by a model command: the slow test runs it
            continue
        if ("--out" in argv or "--plot" in argv) and "--force" not in argv:  # the README repeats some outputs (a.json)
            argv += ["--force"]
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 0, f"{cmd}: exit {rc}: {err}"
        ran.append(cmd)
    assert len(ran) >= 10, ran
    made_by_models = {"m.csv", "kv.json", "kv.alloc.json", "formats.json", "h.json", "m.json", "plan.csv",
                      "q.safetensors", "digits.profile.json"}
    for cmd in later:
        assert set(inputs_of(shlex.split(cmd)[1:])) <= made_by_models, cmd


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for cmd in readme_commands():
        if not runnable(cmd):
            continue
        if cmd.startswith("bitalloc "):
            argv = [sys.executable, "-m", "bitalloc.cli", *shlex.split(cmd)[1:]]
            if ("--out" in argv or "--plot" in argv) and "--force" not in argv:
                argv.append("--force")
            p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        else:
            p = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}: {p.stderr[-1500:]}"
