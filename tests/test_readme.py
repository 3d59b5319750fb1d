"""README.md stays true: its operator example registers, passes `bench check`, and the commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.check import run_checks
from bench.cli import main
from operators import create_op, list_ops

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in Path(README.parent / ".ci" / "run").read_text()


def test_add_an_operator_example_passes_the_checks(restore_registry: None, capsys: pytest.CaptureFixture) -> None:
    (example,) = [block for block in python_blocks() if "@register_op" in block]
    code_lines = [line for line in example.splitlines() if line.strip()]
    assert len(code_lines) <= 30, "the README promises a short example"
    exec(compile(example, str(README), "exec"), {})
    assert "mixconv" in list_ops("conv")
    results = run_checks("mixconv", channels=9)
    assert [r for r in results if r.status == "fail"] == []
    assert create_op("mixconv", 6, 12, stride=2).splits == [2, 2, 2]
    assert main(["check", "op=mixconv", "channels=7"]) == 0


def test_readme_cli_examples_compose(capsys: pytest.CaptureFixture) -> None:
    bench_lines = re.findall(r"^bench (run|profile) (.*?)(?:\s+#.*)?$", README.read_text(), flags=re.M)
    assert bench_lines
    for command, rest in bench_lines:
        args = rest.split()
        multirun = "-m" in args
        args = [a for a in args if a not in ("-m", "--cfg")]
        assert main([command, "--cfg", *(["-m"] if multirun else []), *args]) == 0, rest
