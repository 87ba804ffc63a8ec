"""The README and docs/ name only commands, options, scripts, files and links that exist.

Every command in a fenced shell block or in inline code that runs ``raymmrec <sub>``,
``python -m raymmrec[.module]``, ``python -m benchmarks.<x> [mode]``, ``python jobs/<x>.py`` or
``python benchmarks/<x>.py`` is checked against the argparse parser that command really builds (a
subcommand's own, where the parser has subcommands): the parser is captured at its first ``parse_args``
call (which then raises instead of parsing), so nothing runs and a new option needs no change here. A ``--option`` named on its own in inline code must exist in at least one of those
parsers. Paths into the repository (``jobs/train.py``, ``raymmrec/models/bm3.py``) must exist, and
relative Markdown links must lead to an existing file and, with ``#anchor``, to a heading there.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import runpy
import shlex
import sys
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
OPTION = re.compile(r"^\[?(--[A-Za-z][\w-]*)")
WORD = re.compile(r"^[a-z][a-z0-9_-]*$")
REPO_DIRS = ("raymmrec/", "jobs/", "benchmarks/", "tests/", "cluster/", "docker/", "docs/")
SCRIPT = re.compile(r"^(?:\./)?((?:jobs|benchmarks)/[\w.-]+\.py)$")
MODULE = re.compile(r"^(?:raymmrec|benchmarks)(?:\.\w+)+$")  # python -m raymmrec.features.demo, benchmarks.bench_train


# ---------------------------------------------------------------- the parsers the code builds

class DocError(ValueError):
    """A document names something the code does not have."""


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


@contextmanager
def _capture_parsers():
    """Every ``parse_*args`` raises ``_Captured(parser)`` instead of parsing."""
    names = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")
    saved = {n: getattr(argparse.ArgumentParser, n) for n in names}

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    old_argv = sys.argv
    sys.argv = ["doc-check", "--help"]  # never read: the first parse call raises
    try:
        for n in names:
            setattr(argparse.ArgumentParser, n, capture)
        yield
    finally:
        for n, f in saved.items():
            setattr(argparse.ArgumentParser, n, f)
        sys.argv = old_argv


def _captured(run) -> argparse.ArgumentParser:
    with _capture_parsers():
        try:
            run()
        except _Captured as c:
            return c.parser
    raise AssertionError("the program returned without parsing any arguments")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


@cache
def cli_parser(sub: str | None) -> argparse.ArgumentParser:
    """``raymmrec`` (``sub=None``) or the parser of ``raymmrec <sub>``, however main() dispatches it."""
    from raymmrec import cli

    if sub is None:
        return _captured(lambda: cli.main(["--help"]))
    p = _captured(lambda: cli.main([sub]))
    if p.prog == "raymmrec":  # a subcommand of the main parser (train, recommend, ...)
        return _subparsers(p)[sub]
    return p


@cache
def script_parser(rel: str) -> argparse.ArgumentParser | None:
    """The script's parser; None for a script without argparse (never run: it would do its work)."""
    if not re.search(r"ArgumentParser|import\s+\w*main\b", (ROOT / rel).read_text()):
        return None
    return _captured(lambda: runpy.run_path(str(ROOT / rel), run_name="__main__"))


@cache
def module_parser(module: str) -> argparse.ArgumentParser:
    return _captured(lambda: runpy.run_module(module, run_name="__main__", alter_sys=False))


def options_of(p: argparse.ArgumentParser) -> set[str]:
    return {s for s in p._option_string_actions if s.startswith("--")}


def first_choices(p: argparse.ArgumentParser) -> tuple[str, ...] | None:
    """The choices of the first positional argument (``study noisy-labels``, ``bench... speed``)."""
    for a in p._actions:
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction):
            return tuple(a.choices) if a.choices else None
    return None


# ---------------------------------------------------------------- what the documents say

def _pages() -> dict[Path, str]:
    return {p: p.read_text() for p in DOCS}


def fenced_and_inline(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Shell-like fenced blocks as (language, body), and inline code spans of the rest."""
    blocks = [(m.group(1).strip().lower(), m.group(2)) for m in FENCE.finditer(text)]
    rest = FENCE.sub("\n", text)
    inline = [s.strip() for s in re.findall(r"`([^`]+)`", rest.replace("\n", " "))]
    return blocks, inline


def shell_commands(body: str) -> list[str]:
    """Lines without comments, continuations joined, split at `` | ``, ``&&``, ``||`` and ``;``."""
    lines = [re.split(r"(?:^|\s)#", line, maxsplit=1)[0] for line in body.splitlines()]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        out += [c for c in re.split(r"\s(?:\|\||&&|\||;)\s", line.replace("\\|", "/")) if c.strip()]
    return out


def tokens(cmd: str) -> list[str]:
    try:
        return shlex.split(cmd)
    except ValueError:  # an apostrophe in prose
        return cmd.split()


def programs(toks: list[str]):
    """(kind, name, rest of the tokens) for each program of ours that the tokens run."""
    for i, t in enumerate(toks):
        rest = toks[i + 1:]
        if t == "raymmrec" and (i == 0 or toks[i - 1] in {"-m", "exec", "--", "time", "nice"}
                                or "=" in toks[i - 1]):
            yield "cli", None, rest
        elif i >= 1 and toks[i - 1] == "-m" and MODULE.match(t):
            yield "module", t, rest
        elif m := SCRIPT.match(t):
            if i >= 1 and re.match(r"^python[\d.]*$", Path(toks[i - 1]).name):
                yield "script", m.group(1), rest


def resolve(kind: str, name: str | None, rest: list[str]) -> tuple[argparse.ArgumentParser | None, list[str], str]:
    """The parser the command reaches, the tokens left for it, and a label; None if unknowable."""
    label = name or "raymmrec"
    if kind == "cli":
        if not rest or not WORD.match(rest[0]):
            return None, rest, label  # `raymmrec ...`, `raymmrec` alone
        subs = _subparsers(cli_parser(None))
        if rest[0] not in subs:
            raise DocError(f"`raymmrec {rest[0]}` is not a raymmrec subcommand (have: {sorted(subs)})")
        return cli_parser(rest[0]), rest[1:], f"raymmrec {rest[0]}"
    if kind == "module":
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # its package does not exist
            found = False
        if not found:
            raise DocError(f"no module {name}")
        return subcommand(module_parser(name), rest, f"python -m {name}")
    if not (ROOT / name).is_file():
        raise DocError(f"{name} does not exist")
    return script_parser(name), rest, name


def subcommand(p: argparse.ArgumentParser, rest: list[str], label: str
               ) -> tuple[argparse.ArgumentParser, list[str], str]:
    """A parser with subcommands (``bench_train epoch``): the named subcommand's parser and the tokens after it."""
    subs = _subparsers(p)
    if not subs or not rest or not WORD.match(rest[0]):
        return p, rest, label
    if rest[0] not in subs:
        raise DocError(f"`{label} {rest[0]}`: expected one of {sorted(subs)}")
    return subs[rest[0]], rest[1:], f"{label} {rest[0]}"


def named_options(rest: list[str]) -> list[str]:
    return [m.group(1) for t in rest if (m := OPTION.match(t))]


# ---------------------------------------------------------------- the checks

def _commands_of_page(text: str):
    blocks, inline = fenced_and_inline(text)
    cmds = [c for lang, body in blocks if lang in SHELL_LANGS for c in shell_commands(body)]
    cmds += [c for span in inline for c in shell_commands(span)]
    return cmds, inline


@cache
def all_parsers() -> tuple[argparse.ArgumentParser, ...]:
    """Every parser of a subcommand, a job script, and a benchmark or module the docs run."""
    ps: list[argparse.ArgumentParser | None] = [cli_parser(s) for s in _subparsers(cli_parser(None))]
    ps += [script_parser(f"jobs/{p.name}") for p in sorted((ROOT / "jobs").glob("*.py"))]
    for text in _pages().values():
        for cmd in _commands_of_page(text)[0]:
            for kind, name, rest in programs(tokens(cmd)):
                if kind != "cli":
                    try:
                        ps.append(resolve(kind, name, rest)[0])
                    except DocError:  # check_command reports it
                        pass
    ps += [sub for p in ps if p is not None for sub in _subparsers(p).values()]
    return tuple(p for p in ps if p is not None)


def check_command(cmd: str) -> list[str]:
    errors = []
    for kind, name, rest in programs(tokens(cmd)):
        try:
            parser, rest, label = resolve(kind, name, rest)
        except DocError as e:
            errors.append(str(e))
            continue
        if parser is None:
            continue
        choices = first_choices(parser)
        if choices and rest and WORD.match(rest[0]) and rest[0] not in choices:
            errors.append(f"`{label} {rest[0]}`: expected one of {list(choices)}")
        known = options_of(parser)
        errors += [f"`{label}` has no option {o}" for o in named_options(rest) if o not in known]
    return errors


def test_docs_pages_exist():
    assert (ROOT / "docs").is_dir() and len(DOCS) > 3
    for page in DOCS:
        assert page.stat().st_size > 0, page


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_and_options_exist(page):
    """Every raymmrec subcommand / job / benchmark named with its options exists with them."""
    cmds, inline = _commands_of_page(page.read_text())
    errors = [f"{e}  (in: {c.strip()[:100]})" for c in cmds for e in check_command(c)]
    # an option named on its own (`--num-workers`, `--grid wide`) must exist somewhere
    every = set().union(*(options_of(p) for p in all_parsers()))
    for span in inline:
        toks = tokens(span)
        if toks and (m := OPTION.match(toks[0])) and m.group(1) not in every:
            errors.append(f"no command has the option {m.group(1)}  (in: `{span}`)")
    assert not errors, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(errors)


def _slug(heading: str) -> str:
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    body = FENCE.sub("\n", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for h in re.findall(r"^#{1,6} (.+)$", body, re.MULTILINE):
        s = _slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_links_exist(page):
    """Repository paths in code (``jobs/tune.py``, ``raymmrec/fusion.py``) and relative links resolve."""
    text = page.read_text()
    errors = []
    blocks, inline = fenced_and_inline(text)
    words = [t for span in inline for t in tokens(span)]
    words += [t for lang, body in blocks if lang in SHELL_LANGS for c in shell_commands(body) for t in tokens(c)]
    for w in words:
        w = w.strip("[](),;:")
        if w.startswith("./"):
            w = w[2:]
        if w.startswith(REPO_DIRS) and not re.search(r"[<>*{}$]|\.\.\.", w) and "/" in w.rstrip("/"):
            if not (ROOT / w).exists():
                errors.append(f"{w} does not exist")
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("\n", text)):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            errors.append(f"link to {target}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            errors.append(f"link to {target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not errors, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(errors)


def test_the_check_sees_a_missing_option_and_subcommand():
    """The checker itself: made-up options, subcommands and scripts fail; real ones pass."""
    assert check_command("raymmrec train --method bm3 --data ml100k --run-name x train.epochs=2") == []
    assert check_command("ray job submit --working-dir . -- python jobs/tune.py --method bm3 --gpus-per-trial 1") == []
    assert check_command("raymmrec train --method bm3 --no-such-option")
    assert check_command("python jobs/train.py --num-workers 2 --no-such-option 3")
    assert check_command("raymmrec no-such-command --data x")
    assert check_command("python jobs/no_such_job.py --data x")
    assert check_command("raymmrec study noisy-labels --rates 0,0.2") == []
    assert check_command("raymmrec study noisy-label --rates 0,0.2")
    assert check_command("python -m raymmrec.features.demo --out /tmp/demo") == []
    assert check_command("python -m raymmrec.features.nope --out /tmp/demo")
    assert check_command("python -m benchmarks.bench_train epoch --method bm3 --epochs-measured 3 train.lr=0.1") == []
    assert check_command("python -m benchmarks.bench_train compare --epochs-measured 3")  # epoch's option, not compare's
    assert check_command("python -m benchmarks.bench_train epochs --method bm3")
    assert check_command("python -m benchmarks.bench_ray --commands --node-memory --num-workers 2") == []
    assert check_command("python -m benchmarks.no_such_bench --method bm3")


# ---------------------------------------------------------------- what the docs say of the code

OVERRIDE = re.compile(r"^(data|train|eval)\.([a-z_]+)=([^\s`;,)]+)[;,)]*$")
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/root/|/Users/|/home/(?!ray\b)[a-z]\w*/)")
FIRST_PERSON = re.compile(r"(?<![\w`'/-])(I (?:[a-z]+)|I've|I'd|my)\b")


def check_override(token: str) -> list[str]:
    """``section.key=value`` names a field of the run config and, where the field takes one of a few
    words, one of them."""
    import typing

    from raymmrec.config import RunSpec

    m = OVERRIDE.match(token)
    if not m:
        return []
    section, key, value = m.groups()
    fields = RunSpec.model_fields[section].annotation.model_fields
    if key not in fields:
        return [f"`{token}`: the config has no {section}.{key}"]
    ann = fields[key].annotation
    words = typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else ()
    if words and value not in words:
        return [f"`{token}`: {section}.{key} takes one of {list(words)}"]
    return []


def _prose(text: str) -> str:
    """``text`` without its fenced blocks and inline code."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", sorted(_pages()), ids=lambda p: str(p.relative_to(ROOT)))
def test_config_overrides_named_in_the_docs_exist(page):
    """Every ``data.*``/``train.*``/``eval.*`` override a doc shows (in a command or inline) is a field of
    the config with an accepted value: a renamed key or a mode the code no longer has fails here."""
    text = _pages()[page]
    cmds, inline = _commands_of_page(text)
    found = {t for c in cmds for t in tokens(c)} | {s.strip() for s in inline}
    errors = sorted({e for t in found for e in check_override(t)})
    assert not errors, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize("page", sorted(_pages()), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_no_machines_folder_and_speak_to_the_user(page):
    """No doc names a folder of the machine it was written on, and none speaks in the first person
    singular (docs speak to the user, not about a session)."""
    text = _pages()[page]
    errors = [f"a folder of one machine: {m.group(0)!r}" for m in MACHINE_PATH.finditer(text)]
    errors += [f"first person: {m.group(0)!r}" for m in FIRST_PERSON.finditer(_prose(text))]
    assert not errors, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(errors)


def test_the_doc_checks_see_a_bad_override_a_machine_path_and_the_first_person():
    assert check_override("train.shard=rows") == ["`train.shard=rows`: train.shard takes one of "
                                                  "['auto', 'none', 'columns']"]
    assert check_override("train.epoch=3") == ["`train.epoch=3`: the config has no train.epoch"]
    assert check_override("train.shard=columns") == [] and check_override("model.n_layers=2") == []
    assert MACHINE_PATH.search("read /work/shared/data/lfm2k") and not MACHINE_PATH.search("/home/ray/raymmrec")
    assert FIRST_PERSON.search(_prose("so I interrupted the run")) and not FIRST_PERSON.search(_prose("`I x`"))
