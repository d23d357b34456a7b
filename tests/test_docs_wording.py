"""The docs describe the software as it is: their wording, their links, README's shape and its printed outputs.

- wording: README.md, docs/*.md, the Makefile, pyproject.toml, benchmarks/, src/ and tests/ never speak of the people
  or the process that produced the project (who worked on it, when, on whose machine, under which tracker
  number: the patterns below). Measurements name the machine, its load and the date instead, and something
  unmeasured is said plainly ("GPU: not measured"). In Python files only comments and string literals are read, so a
  code identifier such as ``session = onnxruntime.InferenceSession(...)`` is fine; in Markdown the same identifiers are
  allowed by an explicit pattern.
- links: every relative target of a Markdown link or image, and of an HTML ``src``/``href``, in README.md and
  docs/*.md names a file that exists; a ``#fragment`` names a heading of the target page (GitHub's anchor rule).
- README's shape: quick start, the command line (a section and an example run for every subcommand), the library,
  then an index that lists every page of docs/.
- README's outputs: the examples of the cheap, deterministic commands, and every Python example shown with its
  output, are rerun in-process and must print what the README shows.
"""

from __future__ import annotations

import io
import re
import shlex
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

# ---------------------------------------------------------------------------------------------------- wording

# Each pattern with the reason it is refused; matched case-insensitively, across line breaks.
FORBIDDEN = {
    r"\bsessions?\b": "a work session is not part of the software",
    r"\bcoordinators?\b": "say what ran, not who",
    r"\bshared\s+(?:\d+-core\s+)?(?:development\s+)?(?:machines?|cpus?|cores?|hosts?)\b": (
        "name the machine and its load (e.g. 'load average 13 from other jobs') instead"
    ),
    r"\b(?:machines?|cpus?|cores?)\s+shared\s+(?:with|by)\b": "name the machine and its load instead",
    r"\b(?:this|the)\s+loaded\s+machine(?:'s)?\b": "name the load (e.g. 'under a load average of 3') instead",
    r"\bissues?\s*#?\s*\d+\b": "issue numbers belong to the tracker, not the software",
    r"\bthe\s+issue(?:'s)?\b": "state the requirement itself, not where it was filed",
    r"\b(?:helpers?|agents?)\s+(?:working|running)\s+in\s+parallel\b": "say what ran, not who",
    r"\bnot\s+(?:measured|run|done)\s+(?:in|during)\s+this\b": "say plainly what was not measured",
}
# Code identifiers holding a forbidden word, allowed in Markdown (Python files are read by token instead).
ALLOWED = re.compile(r"\bsession\s*(?:=|\.\w+\()")

TEXT_SUFFIXES = {".py", ".md", ".c", ".h", ".sh", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml"}


def _files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("benchmarks", "src", "tests"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    return [p for p in files if p.exists() and p.resolve() != THIS and "__pycache__" not in p.parts]


def _prose(path: Path) -> list[tuple[int, str]]:
    """(first line number, text) pieces to read: a Python file's strings and runs of comment lines (``#`` removed, so
    a phrase broken over two comment lines is still one phrase); any other file whole."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return [(1, text)]
    pieces: list[tuple[int, str]] = []
    last_comment = -1
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            body = tok.string.lstrip("#")
            if pieces and tok.start[0] == last_comment + 1:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + "\n" + body)
            else:
                pieces.append((tok.start[0], body))
            last_comment = tok.start[0]
        elif tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            pieces.append((tok.start[0], tok.string))
    return pieces


def _violations(path: Path, root: Path = ROOT) -> list[str]:
    """Each forbidden phrase of a file, as 'path:line: phrase (reason)'."""
    found = []
    for first_line, text in _prose(path):
        text = ALLOWED.sub(lambda m: " " * len(m.group(0)), text)
        for pattern, reason in FORBIDDEN.items():
            for match in re.finditer(pattern, text, re.IGNORECASE):
                number = first_line + text.count("\n", 0, match.start())
                phrase = " ".join(match.group(0).split())
                found.append(f"{path.relative_to(root)}:{number}: {phrase!r} ({reason})")
    return found


def test_wording_describes_the_software_only():
    files = _files()
    assert any(p.name == "README.md" for p in files) and any(p.suffix == ".py" for p in files)
    found = sorted(v for path in files for v in _violations(path))
    assert not found, "wording about the process, not the software:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "on a 2-core machine shared with seven other jobs",
        "the development machine (2 cores shared by eight concurrent jobs)",
        "a shared 2-core machine",
        "(the issue's setting: bf16 autocast)",
        "the coordinator reruns it",
    ],
)
def test_wording_check_catches(tmp_path, line):
    # The check must fail on the phrasings it exists to keep out, in Markdown and in a Python comment alike.
    md = tmp_path / "page.md"
    md.write_text(f"Intro.\n{line}\n", encoding="utf-8")
    py = tmp_path / "mod.py"
    py.write_text(f"x = 1  # {line}\n", encoding="utf-8")
    for path in (md, py):
        assert _violations(path, tmp_path), line


def test_wording_check_allows_code_identifiers(tmp_path):
    py = tmp_path / "mod.py"
    py.write_text('import onnxruntime\nsession = onnxruntime.InferenceSession("m.onnx")\nsession.run(None, {})\n')
    md = tmp_path / "page.md"
    md.write_text("```python\nsession = onnxruntime.InferenceSession(path)\nsession.run(None, feeds)\n```\n")
    for path in (py, md):
        assert not _violations(path, tmp_path)


def test_wording_check_reads_phrases_across_lines(tmp_path):
    md = tmp_path / "page.md"
    md.write_text("Timed on a 2-core machine\nshared with other jobs.\n")
    py = tmp_path / "mod.py"
    py.write_text("# Timed on a 2-core machine\n# shared with other jobs.\nx = 1\n")
    for path in (md, py):
        assert [v.split(" (")[0] for v in _violations(path, tmp_path)] == [f"{path.name}:1: 'machine shared with'"]


# ---------------------------------------------------------------------------------------------------- links

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"\b(?:src|href)=\"([^\"]+)\"")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _outside_code(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (code words kept), spaces to hyphens, then -1, -2,
    ... for repeats."""
    anchors: set[str] = set()
    for _, line in _outside_code(path):
        heading = HEADING.match(line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(2).lower()).replace(" ", "-")
            candidate, n = slug, 0
            while candidate in anchors:
                n += 1
                candidate = f"{slug}-{n}"
            anchors.add(candidate)
    return anchors


def _broken_links(path: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for number, line in _outside_code(path):
        line = INLINE_CODE.sub("``", line)  # a link written as code is not a link
        for target in [*LINK.findall(line), *HTML_LINK.findall(line)]:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, data:
                continue
            file_part, _, fragment = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
                broken.append(f"{where} (no heading with anchor #{fragment} in {resolved.name})")
    return broken


def test_markdown_links_resolve():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(files) > 3
    broken = [b for path in files for b in _broken_links(path)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_check_catches_missing_files_and_anchors(tmp_path):
    (tmp_path / "there.md").write_text("# A heading: with `code`\n\n## A heading: with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) [ok](there.md#a-heading-with-code-1) [web](https://x.org)\n"
        '[gone](missing.md) ![gone](img/none.png) [bad](there.md#nowhere) <img src="nothing.gif">\n'
        "```\n[in code](ignored.md)\n```\n"
    )
    broken = _broken_links(page, tmp_path)
    assert [b.split(": ", 1)[1].split(" (")[0] for b in broken] == [
        "missing.md",
        "img/none.png",
        "there.md#nowhere",
        "nothing.gif",
    ]


# ---------------------------------------------------------------------------------------------------- README's shape


def _readme_part(start: str, end: str | None) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index(f"\n## {start}\n") : text.index(f"\n## {end}\n") if end else len(text)]


def test_readme_is_quick_start_commands_library_then_docs_index():
    titles = [line[3:] for _, line in _outside_code(ROOT / "README.md") if line.startswith("## ")]
    assert titles == ["Quick start", "Command line", "Library", "Documentation"]
    # Every subcommand has a section of its own (or shares one) under "Command line", with an example run.
    from convatlas.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    command_line = _readme_part("Command line", "Library")
    headings = " ".join(line for line in command_line.splitlines() if line.startswith("### "))
    assert not [c for c in commands if f"convatlas {c}" not in headings], "a subcommand has no README section"
    assert not [c for c in commands if f"$ convatlas {c}" not in command_line], "a subcommand has no README example"
    # The index lists every page of docs/.
    index = _readme_part("Documentation", None)
    unlisted = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name})" not in index]
    assert not unlisted, f"README's 'Documentation' index does not list: {unlisted}"


# ---------------------------------------------------------------------------------------------------- README's outputs

# Commands whose README output is deterministic and cheap (no data, no training, no timing): rerun in-process and
# compared line for line, so a change of wording or numbers in the CLI shows here.
RERUN = ("arith", "tour", "models", "summary", "rf")


def _console_examples(path: Path) -> list[tuple[int, list[str], str]]:
    """(line, argv after ``convatlas``, printed output) of each ``$ convatlas ...`` in a ```console block."""
    examples: list[tuple[int, list[str], str]] = []
    language: str | None = None
    current: tuple[int, list[str], list[str]] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        starts_command = language == "console" and line.startswith("$ ")
        if (FENCE.match(line) or starts_command) and current:
            examples.append((current[0], current[1], "\n".join(current[2])))
            current = None
        if FENCE.match(line):
            language = None if language is not None else line.strip()[3:]
        elif starts_command:
            words = shlex.split(line[2:])
            current = (number, words[1:], []) if words[0] == "convatlas" else None
        elif current:
            current[2].append(line)
    return examples


def _rerun_examples() -> list:
    return [
        pytest.param(argv, expected, id=f"README:{number}:{' '.join(argv)[:40]}")
        for number, argv, expected in _console_examples(ROOT / "README.md")
        if argv[0] in RERUN
    ]


def test_readme_reruns_cover_every_cheap_command():
    assert {param.values[0][0] for param in _rerun_examples()} == set(RERUN)


@pytest.mark.parametrize(("argv", "expected"), _rerun_examples())
def test_readme_example_output_is_current(argv, expected, capsys):
    # Reference: the output printed in README.md, which must be what the command prints today.
    from convatlas.cli import main

    status = main(argv)
    out, err = capsys.readouterr()
    assert (out + err).rstrip("\n") == expected.rstrip("\n")
    assert status == (2 if "error:" in expected else 0)


def _python_examples(path: Path) -> list:
    """Each ```python block followed at once by a ```text block: (line, code, printed output)."""
    text = path.read_text(encoding="utf-8")
    found = re.finditer(r"^```python\n(.*?)^```\n```text\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return [pytest.param(m.group(1), m.group(2), id=f"README:{text.count(chr(10), 0, m.start()) + 1}") for m in found]


def test_readme_python_examples_are_found():
    assert len(_python_examples(ROOT / "README.md")) >= 4


@pytest.mark.parametrize(("code", "expected"), _python_examples(ROOT / "README.md"))
def test_readme_python_example_prints_what_it_shows(code, expected, capsys):
    # Reference: the output printed under the example in README.md. Run with a fixed seed, as a reader's fresh
    # interpreter would be for the examples that seed themselves; the others print only seed-free facts.
    import torch

    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")
