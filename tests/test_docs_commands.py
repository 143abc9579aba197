"""The docs say what dlc does. The `dlc ...` commands that README.md and docs/*.md show a user,
read from the text: each names a command of the CLI, each `--flag` is an option of that command,
each `specs/...` path exists (the docs are parsed and the CLI's click tree asked; nothing runs);
every command has its row in the README's Commands table and a --help whose first line says
what it does. And what the README states about the CLI: the run folder's entries, the commands
that take --device, the extras it installs, the size budget. docs/spec-language.md is generated
from the schema (tests/test_generate.py) and left out."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import typer

from conftest import ROOT, SPECS
from test_size import FUNCTION_LINES, MODULE_LINES, PACKAGE_LINES

from dlc.cli import app
from dlc.data._sources import SCHEMES
from dlc.model.layers import LAYERS

DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                    if p.name != "spec-language.md")]
FENCE = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`(dlc\s[^`]*)`")  # a code span; it may break across lines
SHELL_BREAKS = {"&&", "||", "|", ";"}


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def shell_lines(block: str) -> list[tuple[int, list[str]]]:
    """A shell block's command lines as (index of their first line, shlex tokens):
    continuations joined, comments dropped, a quote left open at a line's end (a curl body)
    continued on the next line."""
    lines, held, first = [], "", 0
    for i, line in enumerate(block.splitlines()):
        first = first if held else i
        held += line
        if held.endswith("\\"):
            held = held[:-1] + " "
            continue
        try:
            lines.append((first, shlex.split(held, comments=True)))
        except ValueError:  # no closing quotation yet
            held += "\n"
            continue
        held = ""
    assert held == "", f"unclosed quote in {block!r}"
    return lines


def _runs_dlc(part: list[str], i: int) -> bool:
    """part[i] is the program run: `dlc` first (after `env` and its VAR=value words), after
    `-m`, or a path to it; not an argument (`git archive REV dlc`)."""
    before = part[i - 1] if i else ""
    return (part[i] == "dlc" or part[i].endswith("/dlc")) and \
        (not i or before in ("-m", "env") or "=" in before)


def shell_commands(block: str) -> list[tuple[int, list[str]]]:
    """The dlc invocations of a shell block, as (line index, the arguments after `dlc`)
    (`.venv/bin/dlc`, `-m dlc` under python or torchrun), one per `&&`-separated part of a
    command line."""
    found = []
    for index, tokens in shell_lines(block):
        part = []
        for token in [*tokens, ";"]:
            if token not in SHELL_BREAKS:
                part.append(token)
                continue
            starts = [i for i, t in enumerate(part) if _runs_dlc(part, i)]
            if starts:
                found.append((index, part[starts[0] + 1:]))
            part = []
    return found


def doc_commands() -> list[tuple[str, list[str]]]:
    """(file:line, arguments after `dlc`) of every dlc command in the docs: in ```sh blocks,
    and as inline code spans (the README's Commands table), whose `[...]`, `|` and `\\|` are
    the usage notation, not shell."""
    found = []
    for doc in DOCS:
        text, name = doc.read_text(), doc.relative_to(ROOT)
        for block in FENCE.finditer(text):
            first = _line_of(text, block.start(1))
            found += [(f"{name}:{first + i}", args) for i, args in shell_commands(block.group(1))]
        for span in INLINE.finditer(text):
            words = re.sub(r"\\?\||[\[\]]", " ", span.group(1)).split()
            found.append((f"{name}:{_line_of(text, span.start())}", words[1:]))
    return found


CLI = typer.main.get_command(app)  # dlc.cli registers every command on the app


def _options(command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(getattr(param, "opts", []) + getattr(param, "secondary_opts", []))
    return {n for n in names if n.startswith("-")}


def problems(args: list[str]) -> list[str]:
    """What in one documented command (its arguments after `dlc`) does not exist: an unknown
    command, a flag that is not one of its options (or of dlc's own, before the command), a
    `specs/` or `bench/specs/` path missing from the repository."""
    words = [w for w in args if w != "..."]
    at = next((i for i, w in enumerate(words) if not w.startswith("-")), len(words))
    found = [f"dlc option {w} does not exist" for w in words[:at] if w not in _options(CLI)]
    rest = words[at:]
    if not rest:
        return found
    command = CLI.commands.get(rest[0])
    if command is None:
        return found + [f"no command 'dlc {rest[0]}'"]
    flags = [w.split("=")[0] for w in rest[1:] if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]
    found += [f"'dlc {rest[0]}' has no option {f}" for f in flags if f not in _options(command)]
    return found + [f"{w} does not exist" for w in rest[1:]
                    if w.startswith(("specs/", "bench/specs/")) and not (ROOT / w).exists()]


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    """The reader found them (a parser that finds nothing would pass every check)."""
    assert len(COMMANDS) > 60 and sum(args[:1] == ["train"] for _, args in COMMANDS) > 15


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_exists(where, args):
    assert problems(args) == [], f"{where}: dlc {' '.join(args)}"


@pytest.mark.parametrize("line,expected", [
    ("dlc train specs/digits_mlp.yaml --out runs/x --bogus-flag 3", "has no option --bogus-flag"),
    ("dlc predict runs/x/model.onnx rows.csv --outptu p.csv", "has no option --outptu"),
    ("dlc --verbose train specs/iris.yaml", "dlc option --verbose does not exist"),
    ("dlc trian specs/iris.yaml", "no command 'dlc trian'"),
    ("dlc validate specs/no_such_spec.yaml", "specs/no_such_spec.yaml does not exist"),
])
def test_the_checker_catches_a_bad_line(line, expected):
    """The checker itself, on lines the docs must never hold, read as the docs are read."""
    ((_, args),) = shell_commands(line)
    assert any(expected in p for p in problems(args)), problems(args)


def test_every_command_has_a_row_in_the_readme():
    text = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `dlc (\w+)", text, re.M))
    assert sorted(set(CLI.commands) - table) == []


@pytest.mark.parametrize("name", sorted(CLI.commands))
def test_command_help_says_what_it_does(cli, name):
    """`dlc NAME --help` exits 0 without a traceback; its first line, the one `dlc --help`
    lists, is one sentence (a docstring's summary wrapped over two lines was listed broken);
    every option says what it is for."""
    r = cli(name, "--help")
    assert r.code == 0 and "Traceback" not in r.out + r.err, r
    command = CLI.commands[name]
    summary = command.help.split("\n\n")[0].strip()
    assert "\n" not in summary and summary.endswith(".") and summary[:30] in r.out, summary
    assert [p.name for p in command.params if p.param_type_name == "option" and not p.help] == []


def test_evaluate_help_names_every_data_source():
    data = next(p for p in CLI.commands["evaluate"].params if p.name == "data")
    assert [s for s in SCHEMES if f"{s}:PATH" not in data.help and f"{s}:NAME" not in data.help] \
        == []


def _paragraph(text: str, start: str) -> str:
    at = text.index(start)
    return text[at:text.index("\n\n", at)]


def test_readme_names_what_a_run_folder_holds(cli, tmp_path):
    """The README's run-folder paragraph names every entry a training writes, and no other
    (checkpoints/ was missing from it); summary.json has the keys the README reads from it."""
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`([\w.]+(?:\.\w+|/))`", _paragraph(text, "A run folder (")))
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path, "-q", "--epochs", "1")
    assert r.code == 0, r
    written = {p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir()}
    assert written - named == set() and named - written == {"best.npz"}, named  # in checkpoints/
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("threads", "train_samples_per_s", "train_run_samples_per_s"):
        assert f"`{key}`" in text and key in summary, key


def test_readme_states_the_size_budget():
    line = next(x for x in (ROOT / "README.md").read_text().splitlines()
                if x.startswith("tests/test_size.py"))
    assert line.endswith(f"modules <= {MODULE_LINES} lines, functions <= {FUNCTION_LINES}, "
                         f"package <= {PACKAGE_LINES:,}"), line


def test_extras_the_docs_install_exist():
    """Each extra of a `pip install 'dlc[...]'` or `'.[...]'` in the docs is in pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")  # the standard library from Python 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    named = {e for doc in DOCS for group in re.findall(r"(?:dlc|\.)\[([\w,-]+)\]", doc.read_text())
             for e in group.split(",")}
    assert len(named) > 5 and named - set(extras) == set(), named


def test_readme_lists_the_commands_that_take_device():
    text = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"`(\w+)`", _paragraph(text, "Every command that runs a model")))
    taking = {name for name, command in CLI.commands.items() if "--device" in _options(command)}
    assert taking <= listed and taking, (taking, listed)


def test_readme_lists_every_layer_type():
    text = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"\w+", text[text.index("Layer types:"):text.index("Tasks:")]))
    assert sorted(set(LAYERS) - listed) == []


def test_readme_examples_are_the_specs():
    """The examples table names each spec of specs/, and only specs that exist."""
    text = (ROOT / "README.md").read_text()
    table = _paragraph(text, "| spec | model and data |")
    named = set(re.findall(r"`(\w+\.yaml)`", table))
    assert named == {p.name for p in SPECS.glob("*.yaml")}


def test_files_the_docs_name_exist():
    """Every repository file the docs point a reader to (a test, a bench script, a module, a
    spec, data) is where they say."""
    path = re.compile(r"(?<![\w./~-])((?:tests|bench|dlc|specs|schemas|docs)/[\w./-]*\w\."
                      r"(?:py|yaml|json|md|csv|onnx|npz|txt))\b")
    named = {m for doc in DOCS for m in path.findall(doc.read_text())}
    assert len(named) > 30 and sorted(p for p in named if not (ROOT / p).exists()) == []
