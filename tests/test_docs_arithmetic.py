"""docs/arithmetic.md cannot drift: its ```python blocks run in order in one namespace, every public function of
convatlas.arithmetic appears in them, and the ```bash commands it lists run through the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from convatlas import arithmetic
from convatlas.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "arithmetic.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_python_examples_run():
    blocks = _blocks("python")
    assert len(blocks) >= 8
    namespace: dict = {}
    for i, block in enumerate(blocks):
        code = compile(block, f"{DOC.name} python block {i}", "exec")
        exec(code, namespace)  # an assert that fails names the block


def test_every_public_function_is_documented_with_an_example():
    code = "\n".join(_blocks("python"))
    missing = [name for name in arithmetic.__all__ if name != "RF" and f"arithmetic.{name}(" not in code]
    assert not missing, f"docs/arithmetic.md has no worked example for {missing}"


@pytest.mark.parametrize("line", [ln for b in _blocks("bash") for ln in b.splitlines() if ln.startswith("convatlas")])
def test_cli_commands_in_the_doc_run(line, capsys):
    assert main(shlex.split(line)[1:]) == 0
    assert capsys.readouterr().out
