"""Write the agent-session traces replayed by scripts/bench_agent.py (deterministic: fixed seeds).

A coding agent works on a small generated Python repository: it lists, greps and reads files
(tool results are the files' real text with line numbers), edits them (later reads show the
edits), and runs pytest (failures quote the real test source). Three traces come out:

- coding_agent.json: one task, one growing tool loop, append-only, ends past 30k prompt tokens.
- history_rewrite.json: the same kind of session with the rewrites real clients make, one kind
  per phase, each turn's `note` naming it.
- interleaved.json: two sessions on two repositories whose turns alternate.

Trace format (read by bench_agent.load_trace): {"name", "description", "tools", "turns",
"check_targets"?: false for traces whose reuse is reported without a verdict}; each
turn is {"session", "append": [messages], "replace": {"index": message}?, "note"?, "max_tokens"}.
A turn's request is the session's previous request messages, with `replace` applied, plus `append`.

    python scripts/traces/make_traces.py [--out scripts/traces]
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
MAX_TOKENS = 16  # generation stays short: the benchmark is about prompt processing

SYSTEM_PROMPT = """You are Forge, an autonomous software engineering agent working inside the user's repository. \
You help with coding tasks: fixing bugs, adding features, refactoring, explaining code and writing tests. \
You work through the tools described above; you cannot see anything the tools do not show you.

# Working style
- Understand before you change. Read the code that is involved, search for its callers and its tests, \
and form a hypothesis about the cause before you edit anything.
- Make the smallest change that solves the problem completely. Do not rewrite modules, rename public \
functions or reformat files unless the task asks for it.
- Follow the conventions of the codebase: its naming, its error handling, its typing style, its test \
layout. Look at neighbouring code before writing new code. Never assume a library is available: check \
pyproject.toml, requirements files or existing imports first.
- Keep the user's code secure: never log, print or commit secrets or credentials, and never weaken \
input validation to make a test pass.
- When you are unsure what the user wants, ask one precise question instead of guessing. When the \
task is clear, do not ask for permission for each step: carry it out.

# Tool use
- Prefer the dedicated tools over run_command: read_file instead of cat, grep instead of grep or rg in a \
shell, list_dir instead of ls, edit_file instead of sed. Dedicated tools are faster, their output is \
structured, and they respect the workspace's ignore rules.
- You may call several tools in one response when the calls are independent (for example reading \
two files). Calls that depend on an earlier result must wait for that result.
- Read a file before you edit it; edit_file refuses to edit a file you have not read in this session.
- After every change, run the relevant tests with run_tests. Before you finish, run the whole suite \
once. If a test fails, read the failure carefully: decide whether the code or the test is wrong, and say \
which in your answer.
- Long outputs are truncated. Narrow your searches (a path, a glob, a more specific pattern) instead of \
repeating them.

# Code style
- Python 3.11, type hints on public functions, f-strings, pathlib for paths, dataclasses for records.
- Docstrings explain why, not what. Comments only where the code cannot speak for itself.
- Errors: raise specific exceptions with messages that name the bad value; never return None to signal \
failure; never use bare except.
- Money is always Decimal, never float. Round only where the business rule says so, with an explicit \
rounding mode.
- Tests use pytest with plain asserts; one behaviour per test; fixtures for shared setup; parametrize \
tables of cases instead of copying tests.

# Version control
- Do not commit, push, create branches or rewrite history unless the user asks. The user reviews \
changes with git diff before committing.
- Never run destructive commands (rm -rf, git reset --hard, git clean, dropping databases) without an \
explicit request.
- Keep unrelated changes out of the diff: no drive-by formatting, no reordered imports in files you \
did not otherwise change.

# Testing
- Find the test command in AGENTS.md, README, pyproject.toml or the CI configuration; never assume one.
- A bug fix starts with a test that fails for the reported reason; it passes once the fix is in. Keep it.
- Do not delete, skip or loosen a failing test to get a green run. If a test encodes behaviour the task \
changes on purpose, update it and say so in your summary.
- Flaky or slow tests are worth a note to the user, not a silent retry loop.

# Examples of the expected brevity
user: which file defines the retry policy?
assistant: src/net/retry.py:14 (class RetryPolicy); the defaults are read from settings.py:88.

user: run the tests
assistant: [calls run_tests] 212 passed, 1 failed: tests/test_io.py::test_unicode_path (the fixture writes \
Latin-1; the reader expects UTF-8). Want me to fix the fixture?

user: rename get_user to fetch_user everywhere
assistant: [greps for get_user, edits the 7 call sites and the definition, runs the tests] Renamed in 5 \
files (8 places); all 212 tests pass. The public alias in api/__init__.py is kept for compatibility.

# Communication
- Be brief. Lead with the result, then the reasoning the user needs to trust it.
- Refer to code as path:line so the user can jump to it.
- When you finish, summarise what changed, how you verified it (which tests, their result), and \
anything you noticed but deliberately left alone.
- If you could not finish, say exactly what is left and why."""


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


_PATH = {"type": "string", "description": "Path relative to the repository root, e.g. 'src/pkg/module.py'."}

TOOLS = [
    _tool(
        "read_file",
        "Read a text file from the repository. The result shows each line prefixed with its 1-based "
        "line number and a tab, like `cat -n`, so that edits and references can point at exact lines. "
        "By default up to 2000 lines are returned from the start of the file; use offset and limit to read "
        "a window of a longer file. Lines longer than 2000 characters are truncated. Binary files are "
        "refused. Reading a file is required before editing it with edit_file or overwriting it with "
        "write_file. It is fine to read several files in one response when you need all of them.",
        {
            "path": _PATH,
            "offset": {"type": "integer", "minimum": 1, "description": "First line to return (1-based)."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 2000, "description": "Number of lines."},
        },
        ["path"],
    ),
    _tool(
        "write_file",
        "Create a new file or overwrite an existing one with the given content. Parent directories are "
        "created as needed. Overwriting a file you have not read in this session fails. Prefer edit_file "
        "for changes to existing files: it sends only the changed part and keeps the rest of the file "
        "untouched. Do not create documentation files (README, *.md) unless the user asks for them. "
        "The content is written exactly as given, so include the final newline.",
        {"path": _PATH, "content": {"type": "string", "description": "The complete new file content."}},
        ["path", "content"],
    ),
    _tool(
        "edit_file",
        "Replace an exact string in a file. old_string must match the file byte for byte, including "
        "indentation and line breaks (copy it from read_file output without the line-number prefix), and "
        "must occur exactly once unless replace_all is true; otherwise the edit fails and nothing changes. "
        "Include enough surrounding lines to make old_string unique. new_string replaces it verbatim. "
        "To insert code, use a nearby line as the anchor and repeat it in new_string. To delete code, "
        "make new_string empty. Several independent edits to the same file should be separate calls.",
        {
            "path": _PATH,
            "old_string": {"type": "string", "description": "Exact text to replace."},
            "new_string": {"type": "string", "description": "Replacement text (must differ from old_string)."},
            "replace_all": {"type": "boolean", "default": False, "description": "Replace every occurrence."},
        },
        ["path", "old_string", "new_string"],
    ),
    _tool(
        "grep",
        "Search file contents with a regular expression (Python re syntax, searched line by line). "
        "Returns matching lines as path:line:text, sorted by path, at most 200 matches. Use glob to "
        "restrict the files searched (e.g. 'src/**/*.py' or '*.toml'), and path to restrict the "
        "directory. Files ignored by .gitignore, binary files and the .git directory are skipped. "
        "Use this to find definitions, callers, tests of a function, configuration keys or error "
        "messages before reading whole files.",
        {
            "pattern": {"type": "string", "description": "Regular expression to search for."},
            "path": {"type": "string", "description": "Directory to search (default: repository root)."},
            "glob": {"type": "string", "description": "Only files whose path matches this glob."},
            "ignore_case": {"type": "boolean", "default": False},
            "context": {"type": "integer", "minimum": 0, "maximum": 10, "description": "Lines around matches."},
        },
        ["pattern"],
    ),
    _tool(
        "list_dir",
        "List a directory of the repository as an indented tree, directories first, with file sizes. "
        "Hidden files, __pycache__, virtual environments and files ignored by .gitignore are left out. "
        "Use depth to see more than one level at once; large trees are truncated with a note.",
        {
            "path": {"type": "string", "description": "Directory relative to the repository root ('.' for the root)."},
            "depth": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
        },
        ["path"],
    ),
    _tool(
        "run_tests",
        "Run the project's test suite with pytest in the repository's virtual environment and return "
        "its output (the summary, and for failures the assertion details and tracebacks). Pass one or "
        "more test paths or node ids (tests/test_x.py::test_name) to run a subset; pass nothing to run "
        "everything. Use -k expressions through the keyword argument. The run is killed after the "
        "timeout. Run the narrowest set of tests that covers your change first, then the whole suite "
        "before you finish.",
        {
            "targets": {"type": "array", "items": {"type": "string"}, "description": "Test files or node ids."},
            "keyword": {"type": "string", "description": "pytest -k expression."},
            "timeout": {"type": "integer", "minimum": 1, "maximum": 600, "default": 120},
        },
        [],
    ),
    _tool(
        "run_command",
        "Run a shell command (bash) in the repository root and return its exit status, stdout and "
        "stderr. Use it for things the other tools cannot do: git status and git diff, running the "
        "program, installing nothing. Do not use it to read, search or edit files. Commands run without "
        "a terminal and without network access; interactive programs will hang until the timeout. "
        "Quote paths that contain spaces. Destructive commands require the user's explicit request.\n\n"
        "Git: only commit when the user asks. Then: run git status and git diff to see staged and unstaged "
        "changes and git log -5 --oneline to follow the repository's message style; stage only the files that "
        "belong to the change (never secrets such as .env or credentials files); write a message whose first "
        "line says why in under 70 characters, with details after a blank line; commit, then run git status to "
        "confirm. If a pre-commit hook changes files, stage them and commit again rather than amending someone "
        "else's commit. Never use --no-verify, never force-push, never change git config. For a pull request, "
        "push the branch with -u and use the gh CLI; the description lists the change, the reason and the test "
        "plan. Do not use interactive flags (git rebase -i, git add -i): they wait for input that never comes.",
        {
            "command": {"type": "string", "description": "The command line."},
            "timeout": {"type": "integer", "minimum": 1, "maximum": 600, "default": 60},
        },
        ["command"],
    ),
    _tool(
        "glob",
        "Find files by name with a glob pattern such as '**/*.py' or 'tests/test_*.py'. Returns matching "
        "paths relative to the repository root, most recently modified first, at most 500. Use it when you "
        "know what a file is called but not where it lives; use grep to search file contents instead.",
        {"pattern": {"type": "string", "description": "Glob pattern; ** matches any number of directories."}},
        ["pattern"],
    ),
    _tool(
        "ask_user",
        "Ask the user a question and wait for the answer. Use it only when the task is ambiguous in a way "
        "that changes what you would build, or before an irreversible action the user did not request. "
        "Offer concrete options when you can. Do not use it to ask for permission to continue routine work.",
        {
            "question": {"type": "string"},
            "options": {"type": "array", "items": {"type": "string"}, "description": "Suggested answers."},
        },
        ["question"],
    ),
    _tool(
        "task",
        "Start a sub-agent with its own context to carry out a self-contained job and report back once. Use "
        "it for broad searches whose intermediate results you do not need to see (\"find every place that "
        "builds an SQL string by concatenation\"), for reviewing a finished change with fresh eyes, or for "
        "independent jobs that can run in parallel. The sub-agent sees none of this conversation: the prompt "
        "must say everything it needs (goal, paths, constraints, what to return). Its final message comes back "
        "as the tool result; it is not shown to the user, so summarise what matters. Agent types: "
        "'explore' (read-only search and reading, fast), 'review' (reads a diff, reports problems, edits "
        "nothing), 'general' (all tools). Do not start a sub-agent for a single grep or a single file read.",
        {
            "description": {"type": "string", "description": "Three to five words shown to the user."},
            "prompt": {"type": "string", "description": "The complete instructions for the sub-agent."},
            "agent_type": {"type": "string", "enum": ["explore", "review", "general"], "default": "general"},
        },
        ["description", "prompt"],
    ),
    _tool(
        "web_fetch",
        "Fetch a URL and return its content as Markdown (HTML is converted, scripts and navigation removed). "
        "Use it to read documentation, changelogs or issues the user points to. Results are cached for 15 "
        "minutes. Redirects to another host are reported, not followed. Never send repository content or "
        "secrets in a URL.",
        {"url": {"type": "string", "format": "uri"}, "prompt": {"type": "string", "description": "What to extract."}},
        ["url"],
    ),
    _tool(
        "web_search",
        "Search the web and return the top results (title, URL, snippet). Use it for information newer than "
        "your training data: library releases, deprecations, error messages from recent versions. Prefer "
        "official documentation among the results and fetch it with web_fetch before relying on it.",
        {
            "query": {"type": "string", "minLength": 2},
            "allowed_domains": {"type": "array", "items": {"type": "string"}},
        },
        ["query"],
    ),
    _tool(
        "todo_write",
        "Maintain a short checklist for multi-step tasks, shown to the user. Send the complete list "
        "each time; mark exactly one item in_progress while you work on it and mark items completed as "
        "soon as they are done. Use it for tasks with three or more distinct steps; skip it for simple "
        "ones.",
        {
            "todos": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string"},
                        "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                    },
                    "required": ["content", "status"],
                },
            }
        },
        ["todos"],
    ),
]


# --- generated source code -------------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    """Word banks from which plausible modules of one project are generated."""

    package: str
    classes: tuple[str, ...]
    nouns: tuple[str, ...]
    attrs: tuple[str, ...]
    errors: tuple[str, ...]
    value_type: str  # the type most computations return
    zero: str  # its zero literal


INVOICES = Domain(
    package="invoicekit",
    classes=("Invoice", "Line", "Customer", "TaxRate", "Totals", "Payment", "Period", "Ledger", "Reminder"),
    nouns=("invoice", "line", "customer", "rate", "payment", "period", "entry", "discount", "reminder", "item"),
    attrs=("code", "amount", "currency", "quantity", "unit_price", "tax_code", "issued_on", "due_on", "status",
           "region", "reference", "category", "customer_id", "paid_on"),
    errors=("InvoiceError", "UnknownTaxCode", "CurrencyMismatch", "ValidationError"),
    value_type="Decimal",
    zero='Decimal("0")',
)

WEATHER = Domain(
    package="weatherstat",
    classes=("Station", "Reading", "Series", "Window", "Summary", "Calibration", "Source"),
    nouns=("station", "reading", "series", "window", "sample", "gap", "sensor", "source", "summary", "row"),
    attrs=("station_id", "timestamp", "value", "unit", "quality", "elevation", "latitude", "longitude",
           "sensor", "interval", "source", "flags"),
    errors=("ParseError", "UnknownStation", "UnitMismatch", "GapTooLarge"),
    value_type="float",
    zero="0.0",
)

VERBS = ("load", "parse", "validate", "compute", "apply", "normalize", "merge", "split", "format", "resolve",
         "collect", "build", "lookup", "convert", "summarize", "filter", "group", "select", "index", "check")
QUALIFIERS = ("", "", "", "active", "pending", "default", "raw", "local", "latest", "open", "valid", "all")


class CodeWriter:
    """Plausible Python modules and pytest files: real syntax, varied names, consistent per module."""

    def __init__(self, domain: Domain, rng: random.Random):
        self.d = domain
        self.rng = rng

    def _pick(self, seq: Sequence[T]) -> T:
        return self.rng.choice(seq)

    def function_name(self) -> str:
        noun = self._pick(self.d.nouns)
        noun = _plural(noun) if self.rng.random() < 0.4 else noun
        return "_".join(p for p in (self._pick(VERBS), self._pick(QUALIFIERS), noun) if p)

    def dataclass_block(self, name: str, n_fields: int) -> str:
        attrs = self.rng.sample(self.d.attrs, n_fields)
        types = {"amount": self.d.value_type, "value": self.d.value_type, "quantity": "int", "interval": "int",
                 "issued_on": "date", "due_on": "date", "paid_on": "date | None", "timestamp": "datetime",
                 "flags": "frozenset[str]", "elevation": "float", "latitude": "float", "longitude": "float"}
        frozen = "(frozen=True)" if self.rng.random() < 0.6 else ""
        noun = re.sub(r"(?<!^)([A-Z])", r" \1", name).lower()
        lines = [f"@dataclass{frozen}", f"class {name}:",
                 f'    """{self._pick(("One", "A single", "An immutable"))} {noun} as stored in the '
                 f'{self._pick(("ledger", "database", "export", "source file", "cache"))}."""', ""]
        optional = False
        for attr in attrs:
            kind = types.get(attr, "str")
            if optional or self.rng.random() < 0.3:
                optional = True
                default = {"int": "0", "str": '""', "float": "0.0", "frozenset[str]": "frozenset()"}.get(kind, "None")
                kind = kind if default != "None" or kind.endswith("None") else kind + " | None"
                lines.append(f"    {attr}: {kind} = {default}")
            else:
                lines.append(f"    {attr}: {kind}")
        check = attrs[0]
        lines += ["", "    def __post_init__(self) -> None:", f"        if not self.{check}:",
                  f'            raise {self._pick(self.d.errors)}(f"{check} is required, got {{self.{check}!r}}")']
        for _ in range(self.rng.randint(1, 2)):
            lines += [""] + ["    " + line if line else "" for line in self.function_lines(method=True)]
        return "\n".join(lines)

    def function_lines(self, method: bool = False) -> list[str]:
        name = self.function_name()
        cls = self._pick(self.d.classes)
        noun = self._pick(self.d.nouns)
        params = [("self", "")] if method else []
        first = _plural(noun)
        params.append((first, f"Iterable[{cls}]" if self.rng.random() < 0.6 else f"Sequence[{cls}]"))
        if self.rng.random() < 0.6:
            params.append(self._pick((("strict", "bool = False"), ("limit", "int | None = None"),
                                      ("key", 'str = "code"'), ("since", "date | None = None"))))
        signature = ", ".join(f"{p}: {t}" if t else p for p, t in params)
        returns = self._pick((self.d.value_type, f"list[{cls}]", f"dict[str, {cls}]", "bool", "None"))
        doc = self._pick((
            f"{name.split('_')[0].capitalize()} the {first}, skipping entries without a {self._pick(self.d.attrs)}.",
            f"Shared by the importers, so a {noun} is checked once no matter where it came from.",
            f"Kept separate from the {self._pick(self.d.nouns)} code so the rounding rule lives in one place.",
            f"The order of {first} is preserved; callers rely on it when rendering.",
            f"Raises {self._pick(self.d.errors)} on the first invalid {noun} instead of collecting errors.",
        ))
        lines = [f"def {name}({signature}) -> {returns}:", f'    """{doc}"""']
        body: list[str] = []
        local = None
        for kind in self.rng.sample(range(9), self.rng.randint(2, 4)):
            block, local = self.statement(kind, first, noun, cls, local)
            body += block
        body += self.returning(returns, local, first)
        return lines + ["    " + line for line in body]

    def statement(self, choice: int, seq: str, noun: str, cls: str, local: str | None) -> tuple[list[str], str | None]:
        """Block number `choice` of a function body; returns it and the local it defines (or the previous one)."""
        a, b = self.rng.sample(self.d.attrs, 2)
        item = noun[:2] if noun[0] in "ls" else noun[0]
        err = self._pick(self.d.errors)
        if choice == 0:
            return [f"if not {seq}:", f'    raise {err}("no {seq} given")'], local
        if choice == 1:
            return [f"total = {self.d.zero}", f"for {item} in {seq}:", f"    if {item}.{a} is None:",
                    "        continue", f"    total += {item}.{b}"], "total"
        if choice == 2:
            return [f"by_{a} = {{{item}.{a}: {item} for {item} in {seq}}}"], f"by_{a}"
        if choice == 3:
            return [f"ordered = sorted({seq}, key=lambda {item}: ({item}.{a}, {item}.{b}))"], "ordered"
        if choice == 4:
            return [f'logger.debug("{seq} to process: %d", len({seq}))'], local
        if choice == 5:
            return [f"groups: dict[str, list[{cls}]] = defaultdict(list)", f"for {item} in {seq}:",
                    f"    groups[{item}.{a}].append({item})"], "groups"
        if choice == 6:
            return ["seen: set[str] = set()", f"for {item} in {seq}:", f"    if {item}.{a} in seen:",
                    f'        raise {err}(f"duplicate {a}: {{{item}.{a}!r}}")', f"    seen.add({item}.{a})"], local
        if choice == 7:
            return ["try:", f"    first = next(iter({seq}))", "except StopIteration:",
                    f'    raise {err}("empty input") from None'], "first"
        return [f"selected = [{item} for {item} in {seq} if {item}.{a} and {item}.{b} is not None]"], "selected"

    def returning(self, returns: str, local: str | None, seq: str) -> list[str]:
        if returns == "None":
            return [f"for item in {local or seq}:", "    _register(item)"]
        if returns == "bool":
            return [f"return bool({local or seq})"]
        if returns.startswith("list"):
            return [f"return list({local if local in ('ordered', 'selected') else seq})"]
        if returns.startswith("dict"):
            return [f"return {{item.{self._pick(self.d.attrs)}: item for item in {seq}}}"]
        if local == "total":
            return ["return total"]
        return [f"return sum((x.{self._pick(self.d.attrs)} for x in {seq}), {self.d.zero})"]

    def module(self, doc: str, imports: list[str], blocks: list[str], n_classes: int, n_functions: int) -> str:
        """Module text: docstring, imports, logger, generated classes and functions, given blocks mixed in."""
        taken = set(re.findall(r"^class (\w+)", "\n".join(blocks), re.MULTILINE))
        free = [c for c in self.d.classes if c not in taken]
        generated = [self.dataclass_block(c, self.rng.randint(3, 6)) for c in self.rng.sample(free, n_classes)]
        generated += ["\n".join(self.function_lines()) for _ in range(n_functions)]
        order = generated[:n_classes] + blocks + generated[n_classes:]
        header = [f'"""{doc}"""', "", "from __future__ import annotations", "", *imports, "",
                  "logger = logging.getLogger(__name__)"]
        return "\n".join(header) + "\n\n\n" + "\n\n\n".join(order) + "\n"

    def test_module(self, under_test: str, names: list[str], n_tests: int) -> str:
        """A pytest file: imports of `names` from `under_test`, a fixture, and generated tests."""
        cls = self._pick(self.d.classes)
        fixture = _plural(self._pick(self.d.nouns))
        first, second = f"A-{self.rng.randint(100, 999)}", f"B-{self.rng.randint(100, 999)}"
        out = [f'"""Tests for {under_test}."""', "", "from __future__ import annotations", "",
               "from datetime import date", "from decimal import Decimal", "", "import pytest", "",
               f"from {under_test} import {', '.join(sorted(names))}", "", "",
               "@pytest.fixture", f"def {fixture}() -> list[{cls}]:",
               f'    return [{cls}(code="{first}", amount=Decimal("12.50")), '
               f'{cls}(code="{second}", amount=Decimal("7.25"))]']
        tests: dict[str, str] = {}
        while len(tests) < n_tests:
            fn = self._pick(names)
            if self.rng.random() < 0.3:
                name = f"test_{fn}_{self._pick(('examples', 'table', 'cases', 'rounding'))}"
                raws = [self.rng.randint(1, 999_999) for _ in range(3)]
                cases = ", ".join(f'("{r / 1000:.3f}", "{round(r / 1000 + 1e-9, 2):.2f}")' for r in raws)
                tests[name] = (f'@pytest.mark.parametrize("raw, expected", [{cases}])\n'
                               f"def {name}(raw, expected):\n    assert str({fn}(Decimal(raw))) == expected")
            else:
                case = self._pick(("empty", "single", "duplicates", "order", "missing_" + self._pick(self.d.attrs),
                                   "strict", "idempotent", "keeps_input"))
                name = f"test_{fn}_{case}"
                check = self._pick((f"assert len(result) == len({fixture})",
                                    f"assert result == {fn}(list({fixture}))",
                                    f'assert [item.code for item in {fixture}] == ["{first}", "{second}"]'))
                tests[name] = (f"def {name}({fixture}):\n    result = {fn}({fixture})\n"
                               f"    assert result is not None\n    {check}")
        bodies = list(tests.values())
        self.rng.shuffle(bodies)
        return "\n".join(out) + "\n\n\n" + "\n\n\n".join(bodies) + "\n"


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


# --- the workspace the agent works in --------------------------------------------------------


class Repo:
    """Files of a repository in memory; tool results are computed from (and edits applied to) them."""

    def __init__(self, root: str, files: dict[str, str]):
        self.root = root
        self.files = dict(sorted(files.items()))

    def read(self, path: str, offset: int = 1, limit: int = 2000) -> str:
        lines = self.files[path].splitlines()
        window = lines[offset - 1 : offset - 1 + limit]
        return "\n".join(f"{n:6}\t{text}" for n, text in enumerate(window, offset))

    def edit(self, path: str, old: str, new: str) -> str:
        text = self.files[path]
        if text.count(old) != 1:
            raise ValueError(f"edit of {path}: old_string occurs {text.count(old)} times")
        start = text[: text.index(old)].count("\n")
        self.files[path] = text.replace(old, new)
        first = max(start - 3, 0)
        snippet = self.read(path, first + 1, new.count("\n") + 8)
        return (f"The file {path} has been updated. Here's the result of running `cat -n` on a snippet "
                f"of the edited file:\n{snippet}")

    def write(self, path: str, content: str) -> str:
        verb = "updated" if path in self.files else "created"
        self.files = dict(sorted({**self.files, path: content}.items()))
        return f"File {verb} successfully at: {path}"

    def grep(self, pattern: str, path: str = "", glob: str = "*") -> str:
        regex = re.compile(pattern)
        hits = [f"{name}:{n}:{line}"
                for name, text in self.files.items()
                if name.startswith(path) and _glob_match(name, glob)
                for n, line in enumerate(text.splitlines(), 1) if regex.search(line)]
        return "\n".join(hits) if hits else "No matches found"

    def tree(self, path: str = ".", depth: int = 2) -> str:
        prefix = "" if path == "." else path.rstrip("/") + "/"
        lines = [f"{self.root}/{prefix}"]
        seen: set[str] = set()
        for name, text in self.files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for level in range(1, min(len(parts), depth + 1)):
                folder = "/".join(parts[:level])
                if folder not in seen:
                    seen.add(folder)
                    lines.append("  " * level + parts[level - 1] + "/")
            if len(parts) <= depth:
                lines.append("  " * len(parts) + f"{parts[-1]} ({len(text.encode())} B)")
        return "\n".join(lines)


def _glob_match(name: str, glob: str) -> bool:
    return fnmatch(name, glob) or fnmatch(name.rsplit("/", 1)[-1], glob)


@dataclass(frozen=True)
class Failure:
    """A failing test as pytest reports it: the source up to `marker` (the failing line) and E lines."""

    test: str  # function name
    marker: str  # text of the failing line
    errors: tuple[str, ...]
    case: int | None = None  # index of the failing parametrize case
    case_id: str = ""
    params: str = ""  # "name = value" lines pytest prints for parametrized arguments


def pytest_output(repo: Repo, paths: list[str], failures: list[Failure], seconds: float) -> str:
    """The text of `pytest` run on `paths` (files), with `failures` failing and every other test passing."""
    width = 80
    failed = {(f.test, f.case): f for f in failures}
    header = ["=" * 29 + " test session starts " + "=" * 30,
              "platform linux -- Python 3.11.9, pytest-8.3.3, pluggy-1.5.0",
              f"rootdir: {repo.root}", "configfile: pyproject.toml", "plugins: cov-5.0.0"]
    rows, done, reports, summary = [], 0, [], []
    items = []
    for target in paths:  # files or node ids (file::test)
        path, _, only = target.partition("::")
        items.append((path, [t for t in _test_items(repo.files[path]) if not only or t[0] == only]))
    total = sum(len(tests) for _, tests in items)
    noun = "item" if total == 1 else "items"
    for path, tests in items:
        marks = ""
        for name, case in tests:
            failure = failed.get((name, case))
            marks += "F" if failure else "."
            if failure:
                reports.append(_failure_report(repo, path, failure))
                node = f"{path}::{name}" + (f"[{failure.case_id}]" if failure.case is not None else "")
                summary.append(f"FAILED {node} - {failure.errors[0]}")
        done += len(tests)
        label = f"{path} {marks}"
        rows.append(label + " " * max(1, width - len(label) - 7) + f"[{100 * done // total:3d}%]")
    counts = f"{total - len(failures)} passed"
    counts = f"{len(failures)} failed, {counts}" if failures else counts
    body = header + [f"collected {total} {noun}", ""] + rows + [""]
    if reports:
        body += [_centered(" FAILURES ", width)] + reports + [_centered(" short test summary info ", width)] + summary
    return "\n".join(body + [_centered(f" {counts} in {seconds:.2f}s ", width)])


def test_files(repo: Repo) -> list[str]:
    return [p for p in repo.files if p.startswith("tests/test_")]


def _centered(title: str, width: int) -> str:
    left = (width - len(title)) // 2
    return "=" * left + title + "=" * (width - left - len(title))


def _test_items(source: str) -> list[tuple[str, int | None]]:
    """(function name, parametrize case index or None) for each test item, in file order."""
    items: list[tuple[str, int | None]] = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        cases = [len(ast.literal_eval(d.args[1])) for d in node.decorator_list
                 if isinstance(d, ast.Call) and ast.unparse(d.func) == "pytest.mark.parametrize"]
        items += [(node.name, c) for c in range(cases[0])] if cases else [(node.name, None)]
    return items


def _failure_report(repo: Repo, path: str, failure: Failure) -> str:
    lines = repo.files[path].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {failure.test}("))
    end = next(i for i in range(start, len(lines)) if failure.marker in lines[i])
    title = failure.test + (f"[{failure.case_id}]" if failure.case is not None else "")
    out = [_centered(f" {title} ", 80).replace("=", "_"), ""]
    if failure.params:
        out += [failure.params, ""]
    out += ["    " + line if line else "" for line in lines[start:end]]
    out.append(">   " + lines[end])
    out += [f"E       {e}" for e in failure.errors]
    out += ["", f"{path}:{end + 1}: {failure.errors[0].split(':')[0]}"]
    return "\n".join(out)


# --- repository 1: invoicekit ------------------------------------------------------------------

INVOICE_IMPORTS = ["import logging", "from collections import defaultdict",
                   "from collections.abc import Iterable, Mapping, Sequence", "from dataclasses import dataclass",
                   "from datetime import date", "from decimal import ROUND_HALF_UP, Decimal", ""]

MODELS_BLOCK = '''@dataclass(frozen=True)
class Line:
    """One invoice line. Prices are net; quantity may be fractional (hours, kilograms)."""

    position: int
    description: str
    quantity: Decimal
    unit_price: Decimal
    tax_code: str
    discount_percent: Decimal = Decimal("0")


@dataclass(frozen=True)
class Invoice:
    """An issued invoice. Lines keep the order in which they are printed."""

    number: str
    customer_id: str
    issued_on: date
    currency: str
    lines: tuple[Line, ...]
    due_on: date | None = None

    def __post_init__(self) -> None:
        if not self.lines:
            raise InvoiceError(f"invoice {self.number} has no lines")
        if len(self.currency) != 3:
            raise InvoiceError(f"invoice {self.number}: currency must be an ISO code, got {self.currency!r}")


@dataclass(frozen=True)
class Totals:
    """What the invoice footer shows; every field is rounded to the cent."""

    net: Decimal
    tax: Decimal
    gross: Decimal'''

MONEY_BLOCK = '''CENT = Decimal("0.01")
HUNDRED = Decimal(100)


def round_money(amount: Decimal) -> Decimal:
    """Round to the cent, half up (commercial rounding), as the tax office expects."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def format_money(amount: Decimal, currency: str) -> str:
    """German notation for the PDF: thousands with '.', decimals with ','."""
    text = f"{round_money(amount):,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")
    return f"{text} {currency}"'''

TAX_BLOCK = '''@dataclass(frozen=True)
class TaxRate:
    """A VAT rate; `percent` is kept as printed (19, 7, 0) and converted once, in `factor`."""

    code: str
    percent: Decimal
    region: str = "DE"

    @property
    def factor(self) -> Decimal:
        return self.percent / HUNDRED


def line_net(line: Line) -> Decimal:
    """Unit price times quantity minus the line discount, unrounded (prices may carry 4 decimals)."""
    gross = line.unit_price * line.quantity
    return gross - gross * line.discount_percent / HUNDRED


def compute_totals(invoice: Invoice, rates: Mapping[str, TaxRate]) -> Totals:
    """Net, tax and gross of an invoice in its currency, rounded to the cent."""
    net = Decimal("0")
    tax = Decimal("0")
    for line in invoice.lines:
        rate = _rate_for(line, rates)
        amount = line_net(line)
        net += amount
        tax += amount * rate.factor
    return Totals(net=round_money(net), tax=round_money(tax), gross=round_money(net + tax))


def tax_breakdown(invoice: Invoice, rates: Mapping[str, TaxRate]) -> dict[str, Decimal]:
    """Tax per rate code, for the summary block printed under the lines."""
    per_rate: dict[str, Decimal] = defaultdict(Decimal)
    for line in invoice.lines:
        rate = _rate_for(line, rates)
        per_rate[rate.code] += line_net(line) * rate.factor
    return {code: round_money(amount) for code, amount in sorted(per_rate.items())}


def _rate_for(line: Line, rates: Mapping[str, TaxRate]) -> TaxRate:
    try:
        return rates[line.tax_code]
    except KeyError:
        raise UnknownTaxCode(f"line {line.position}: unknown tax code {line.tax_code!r}") from None'''

RENDER_BLOCK = '''def render_lines(invoice: Invoice, rates: Mapping[str, TaxRate]) -> list[str]:
    """The line table of the PDF: position, description, quantity, unit price, net, VAT."""
    rows = [f"{'Pos':>3}  {'Description':<32} {'Qty':>8} {'Price':>10} {'Net':>10} {'VAT':>8}"]
    for line in invoice.lines:
        net = line_net(line)
        vat = round_money(net * rates[line.tax_code].factor)
        rows.append(
            f"{line.position:>3}  {line.description[:32]:<32} {line.quantity:>8} "
            f"{line.unit_price:>10} {round_money(net):>10} {vat:>8}"
        )
    return rows


def render_totals(invoice: Invoice, rates: Mapping[str, TaxRate]) -> list[str]:
    """The footer: net, one VAT row per rate, gross."""
    totals = compute_totals(invoice, rates)
    rows = [f"{'Net':<12}{format_money(totals.net, invoice.currency):>16}"]
    for code, amount in tax_breakdown(invoice, rates).items():
        label = f"VAT {rates[code].percent}%"
        rows.append(f"{label:<12}{format_money(amount, invoice.currency):>16}")
    rows.append(f"{'Total':<12}{format_money(totals.gross, invoice.currency):>16}")
    return rows'''

TAX_TESTS = [
    '''def test_compute_totals_single_line():
    totals = compute_totals(make_invoice(("2", "10.00", "S")), RATES)
    assert totals == Totals(net=Decimal("20.00"), tax=Decimal("3.80"), gross=Decimal("23.80"))''',
    '''def test_compute_totals_unknown_code():
    with pytest.raises(UnknownTaxCode, match="unknown tax code 'X'"):
        compute_totals(make_invoice(("1", "1.00", "X")), RATES)''',
    '''def test_breakdown_matches_totals():
    invoice = make_invoice(("1", "0.13", "S"), ("1", "0.13", "S"), ("1", "0.13", "S"), ("1", "1.00", "R"))
    totals = compute_totals(invoice, RATES)
    assert sum(tax_breakdown(invoice, RATES).values()) == totals.tax''',
    '''def test_zero_rate_has_no_tax():
    totals = compute_totals(make_invoice(("5", "3.99", "Z")), RATES)
    assert totals.tax == Decimal("0.00")
    assert totals.gross == totals.net''',
    '''@pytest.mark.parametrize("discount, net", [("0", "100.00"), ("10", "90.00"), ("33.3333", "66.67")])
def test_discount_reduces_net(discount, net):
    line = Line(1, "consulting", Decimal("1"), Decimal("100.00"), "S", Decimal(discount))
    assert round_money(line_net(line)) == Decimal(net)''',
]

TAX_TEST_IMPORTS = """from invoicekit.errors import UnknownTaxCode
from invoicekit.models import Invoice, Line, Totals
from invoicekit.money import round_money
from invoicekit.tax import TaxRate, compute_totals, line_net, tax_breakdown"""

TAX_TEST_HEADER = '''RATES = {"S": TaxRate("S", Decimal("19")), "R": TaxRate("R", Decimal("7")), "Z": TaxRate("Z", Decimal("0"))}


def make_invoice(*lines: tuple[str, str, str]) -> Invoice:
    """An invoice from (quantity, unit price, tax code) triples."""
    return Invoice(
        number="INV-1", customer_id="C-1", issued_on=date(2026, 11, 2), currency="EUR",
        lines=tuple(Line(i, f"item {i}", Decimal(q), Decimal(p), code) for i, (q, p, code) in enumerate(lines, 1)),
    )'''

RENDER_TESTS = [
    '''def test_render_totals_block():
    invoice = make_invoice(("1", "0.13", "S"), ("1", "0.13", "S"), ("1", "0.13", "S"), ("1", "1.00", "R"))
    rows = render_totals(invoice, RATES)
    assert rows[1] == "VAT 7%              0,07 EUR"
    assert rows[-1] == "Total               1,53 EUR"''',
    '''def test_render_lines_header():
    rows = render_lines(make_invoice(("2", "10.00", "S")), RATES)
    assert rows[0].split() == ["Pos", "Description", "Qty", "Price", "Net", "VAT"]''',
    '''def test_line_vat_column_sums_to_footer():
    invoice = make_invoice(("3", "3.35", "S"), ("1", "9.99", "S"), ("7", "1.11", "R"))
    vat_column = [Decimal(row.split()[-1]) for row in render_lines(invoice, RATES)[1:]]
    assert sum(vat_column) == compute_totals(invoice, RATES).tax''',
]

CLI_BLOCK = '''@click.group()
def main() -> None:
    """Create, check and print invoices."""


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rates", "rates_path", type=click.Path(path_type=Path), default=None, help="Rate table (JSON).")
def show(path: Path, rates_path: Path | None) -> None:
    """Print one invoice as the PDF would show it."""
    invoice = load_invoice(path)
    rates = load_rates(rates_path)
    click.echo(f"Invoice {invoice.number}  customer {invoice.customer_id}  issued {invoice.issued_on}")
    click.echo()
    for row in render_lines(invoice, rates):
        click.echo(row)
    click.echo()
    for row in render_totals(invoice, rates):
        click.echo(row)


@main.command(name="list")
@click.option("--customer", default=None, help="Only this customer's invoices.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None)
def list_invoices(customer: str | None, since: datetime | None) -> None:
    """One line per invoice: number, date, customer, gross."""
    rates = load_rates(None)
    for invoice in iter_invoices(INVOICE_DIR, customer=customer, since=since and since.date()):
        totals = compute_totals(invoice, rates)
        click.echo(f"{invoice.number:<10} {invoice.issued_on}  {invoice.customer_id:<8} {totals.gross:>12}")'''

AGENTS_MD = """# invoicekit: notes for agents

- Set up: `python -m venv .venv && .venv/bin/pip install -e '.[dev]'`. Tests: `pytest -q`. Types: `mypy src`.
- Money is `Decimal` everywhere. Round only through `invoicekit.money.round_money`.
- VAT (UStG section 14): the tax of each invoice line is rounded half-up to the cent, and the invoice's
  tax is the sum of the rounded line taxes. The PDF prints per-line VAT, so footer and lines must agree.
- The PDF layout is checked by golden strings in tests/test_render.py; update them only when the layout
  or an amount is meant to change, and say so in the changelog.
- Public API: everything exported from `invoicekit/__init__.py`. Keep signatures stable.
- Changelog: add an entry under "Unreleased" for every user-visible change.
"""


def invoice_repo(rng: random.Random) -> Repo:
    w = CodeWriter(INVOICES, rng)
    pkg = "src/invoicekit"
    errors = '"""Exceptions of invoicekit; all derive from InvoiceError."""\n\n\n' + "\n\n\n".join(
        f'class {name}({"Exception" if name == "InvoiceError" else "InvoiceError"}):\n    """{doc}"""'
        for name, doc in (("InvoiceError", "Base class: anything wrong with an invoice or its data."),
                          ("UnknownTaxCode", "A line names a tax code the rate table does not have."),
                          ("CurrencyMismatch", "Amounts in different currencies were combined."),
                          ("ValidationError", "Input data (JSON, CSV) does not describe a valid invoice."))) + "\n"
    own = ["from invoicekit.errors import InvoiceError, UnknownTaxCode, ValidationError"]
    files = {
        "AGENTS.md": AGENTS_MD,
        "README.md": "# invoicekit\n\nCreate, validate and render invoices with German VAT rules.\n\n"
                     "```\ninvoicekit show examples/INV-2041.json\ninvoicekit list --customer C-104\n```\n",
        "CHANGELOG.md": "# Changelog\n\n## Unreleased\n\n## 0.8.1 (2026-10-14)\n\n- Fix: reminders used the "
                        "issue date instead of the due date for the grace period.\n- CLI: `list` accepts "
                        "`--since`.\n\n## 0.8.0 (2026-09-02)\n\n- New: payment matching by reference.\n- Drop "
                        "Python 3.10.\n",
        "pyproject.toml": '[project]\nname = "invoicekit"\nversion = "0.8.1"\nrequires-python = ">=3.11"\n'
                          'dependencies = ["click>=8.1"]\n\n[project.optional-dependencies]\ndev = ["pytest>=8", '
                          '"mypy>=1.10"]\n\n[project.scripts]\ninvoicekit = "invoicekit.cli:main"\n\n'
                          '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
        f"{pkg}/__init__.py": '"""Invoices with German VAT rules."""\n\nfrom invoicekit.models import Invoice, '
                              'Line, Totals\nfrom invoicekit.tax import TaxRate, compute_totals, tax_breakdown\n\n'
                              '__all__ = ["Invoice", "Line", "TaxRate", "Totals", "compute_totals", "tax_breakdown"]\n',
        f"{pkg}/errors.py": errors,
        f"{pkg}/money.py": w.module("Money helpers: rounding and formatting of Decimal amounts.",
                                    INVOICE_IMPORTS + own, [MONEY_BLOCK], 0, 9),
        f"{pkg}/models.py": w.module("Invoice records as loaded from JSON; immutable once built.",
                                     INVOICE_IMPORTS + own, [MODELS_BLOCK], 3, 6),
        f"{pkg}/tax.py": w.module("VAT computation: rates, line amounts, invoice totals.",
                                  INVOICE_IMPORTS + own + ["from invoicekit.models import Invoice, Line, Totals",
                                                           "from invoicekit.money import HUNDRED, round_money"],
                                  [TAX_BLOCK], 0, 10),
        f"{pkg}/render.py": w.module("Plain-text rendering of invoices (the PDF is drawn from these rows).",
                                     INVOICE_IMPORTS + own + [
                                         "from invoicekit.models import Invoice",
                                         "from invoicekit.money import format_money, round_money",
                                         "from invoicekit.tax import TaxRate, compute_totals, line_net, tax_breakdown"],
                                     [RENDER_BLOCK], 0, 9),
        f"{pkg}/reminders.py": w.module("Payment reminders: which invoices are overdue and by how much.",
                                        INVOICE_IMPORTS + own + ["from invoicekit.tax import compute_totals"],
                                        [], 2, 10),
        f"{pkg}/parser.py": w.module("Loading invoices from the JSON export of the shop system.",
                                     INVOICE_IMPORTS + own + ["import json", "from pathlib import Path"], [], 2, 8),
        f"{pkg}/cli.py": w.module("The `invoicekit` command line (click).",
                                  ["import logging", "from collections.abc import Iterable, Mapping, Sequence",
                                   "from datetime import date, datetime", "from decimal import Decimal",
                                   "import json", "from pathlib import Path", "", "import click", ""] + own + [
                                   "from invoicekit.parser import INVOICE_DIR, iter_invoices, load_invoice, load_rates",
                                   "from invoicekit.render import render_lines, render_totals",
                                   "from invoicekit.tax import compute_totals"], [CLI_BLOCK], 0, 6),
        "tests/test_tax.py": w.test_module("invoicekit.tax", ["compute_totals", "tax_breakdown", "line_net"], 0),
        "tests/test_render.py": w.test_module("invoicekit.render", ["render_lines", "render_totals"], 0),
        "tests/test_money.py": w.test_module("invoicekit.money", ["round_money", "format_money"], 7),
        "tests/test_parser.py": w.test_module("invoicekit.parser", ["load_invoice", "parse_line"], 8),
        "tests/test_reminders.py": w.test_module("invoicekit.reminders", ["overdue_invoices"], 6),
    }
    files["tests/test_tax.py"] = _with_tests(files["tests/test_tax.py"], TAX_TEST_IMPORTS, TAX_TEST_HEADER, TAX_TESTS)
    files["tests/test_render.py"] = _with_tests(
        files["tests/test_render.py"],
        TAX_TEST_IMPORTS.replace("from invoicekit.tax import", "from invoicekit.render import render_lines, "
                                 "render_totals\nfrom invoicekit.tax import"), TAX_TEST_HEADER, RENDER_TESTS)
    return Repo("/home/dev/invoicekit", files)


def _with_tests(module: str, imports: str, header: str, tests: list[str]) -> str:
    """A generated test module's head, then `imports`, `header` and hand-written `tests` instead of generated ones."""
    head = module.split("\n\n\n@pytest.fixture")[0].rsplit("\nfrom ", 1)[0]
    return head + "\n" + imports + "\n\n" + header + "\n\n\n" + "\n\n\n".join(tests) + "\n"


# --- repository 2: weatherstat -----------------------------------------------------------------

WEATHER_IMPORTS = ["import csv", "import logging", "from collections import defaultdict",
                   "from collections.abc import Iterable, Iterator, Mapping, Sequence",
                   "from dataclasses import dataclass", "from datetime import date, datetime, timezone",
                   "from pathlib import Path", ""]

PARSE_BLOCK = '''@dataclass(frozen=True)
class Reading:
    """One measurement; timestamps are UTC, values are in the station's unit."""

    station_id: str
    timestamp: datetime
    value: float
    unit: str
    quality: str = "ok"


def parse_reading(row: Mapping[str, str], station: Station, line_no: int) -> Reading:
    """One CSV row as a Reading; `line_no` only serves error messages."""
    timestamp = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=timezone.utc)
    try:
        value = float(row["value"])
    except ValueError:
        raise ParseError(f"line {line_no}: bad value {row['value']!r}") from None
    return Reading(station.station_id, timestamp, value, station.unit, row.get("quality") or "ok")


def read_station_file(path: Path, station: Station) -> Iterator[Reading]:
    """Readings of a station export (header: timestamp,value,quality), in file order."""
    with path.open(newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            yield parse_reading(row, station, line_no)'''

AGGREGATE_BLOCK = '''def daily_means(readings: Iterable[Reading]) -> dict[date, float]:
    """Mean value per UTC day, in date order; days without readings are absent."""
    sums: dict[date, float] = defaultdict(float)
    counts: dict[date, int] = defaultdict(int)
    for reading in readings:
        day = reading.timestamp.date()
        sums[day] += reading.value
        counts[day] += 1
    return {day: sums[day] / counts[day] for day in sorted(sums)}


def format_daily(means: Mapping[date, float]) -> list[str]:
    """Report lines 'YYYY-MM-DD  value' with two decimals."""
    return [f"{day.isoformat()}  {value:.2f}" for day, value in means.items()]'''

WEATHER_CLI_BLOCK = '''def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `weatherstat daily FILE` and `weatherstat monthly FILE`."""
    parser = argparse.ArgumentParser(prog="weatherstat")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("daily", "monthly"):
        command = sub.add_parser(name)
        command.add_argument("path", type=Path)
        command.add_argument("--station", help="station id (default: from the file name)")
    args = parser.parse_args(argv)
    station = lookup_station(args.station or args.path.stem.removeprefix("station-"))
    try:
        readings = list(read_station_file(args.path, station))
    except ParseError as exc:
        print(f"weatherstat: error: {args.path}: {exc}", file=sys.stderr)
        return 1
    lines = format_daily(daily_means(readings)) if args.command == "daily" else format_monthly(readings)
    print("\\n".join(lines))
    return 0'''

AGGREGATE_FIXED = '''def daily_means(readings: Iterable[Reading]) -> dict[date, float | None]:
    """Mean value per UTC day, in date order; None for a day whose readings are all missing."""
    sums: dict[date, float] = defaultdict(float)
    counts: dict[date, int] = defaultdict(int)
    for reading in readings:
        day = reading.timestamp.date()
        sums[day] += reading.value or 0.0
        counts[day] += reading.value is not None
    return {day: sums[day] / counts[day] if counts[day] else None for day in sorted(sums)}


def format_daily(means: Mapping[date, float | None]) -> list[str]:
    """Report lines 'YYYY-MM-DD  value' with two decimals."""
    return [f"{day.isoformat()}  {'n/a' if value is None else f'{value:.2f}'}" for day, value in means.items()]'''

WEATHER_DIFF_STAT = """ README.md                    |  3 +++
 src/weatherstat/aggregate.py |  9 +++++----
 src/weatherstat/parse.py     |  8 ++++++--
 tests/test_aggregate.py      |  7 +++++++
 tests/test_parse.py          | 10 ++++++++--
 5 files changed, 31 insertions(+), 6 deletions(-)"""

PARSE_TESTS = '''STATION = Station(station_id="0412", name="Hohenpeissenberg", unit="degC", elevation=977.0)


def row(value: str, timestamp: str = "2026-03-01T06:00:00") -> dict[str, str]:
    return {"timestamp": timestamp, "value": value, "quality": "ok"}


def test_parse_reading_value():
    assert parse_reading(row("4.25"), STATION, 2).value == 4.25


def test_parse_reading_is_utc():
    assert parse_reading(row("1"), STATION, 2).timestamp.tzinfo is timezone.utc


@pytest.mark.parametrize("raw", ["abc", "", "1,5"])
def test_parse_reading_rejects_bad_values(raw):
    with pytest.raises(ParseError):
        parse_reading(row(raw), STATION, 7)'''

AGGREGATE_TESTS = '''def reading(day: int, hour: int, value: float | None) -> Reading:
    return Reading("0412", datetime(2026, 3, day, hour, tzinfo=timezone.utc), value, "degC")


def test_daily_means_per_day():
    means = daily_means([reading(1, 6, 4.0), reading(1, 18, 4.5), reading(2, 6, 5.1)])
    assert means == {date(2026, 3, 1): 4.25, date(2026, 3, 2): 5.1}


def test_format_daily():
    assert format_daily({date(2026, 3, 1): 4.25}) == ["2026-03-01  4.25"]'''


def weather_repo(rng: random.Random) -> Repo:
    w = CodeWriter(WEATHER, rng)
    pkg = "src/weatherstat"
    own = ["from weatherstat.errors import GapTooLarge, ParseError, UnknownStation"]
    test_head = ("from datetime import date, datetime, timezone\n\nimport pytest\n\n"
                 "from weatherstat.aggregate import daily_means, format_daily\n"
                 "from weatherstat.errors import ParseError\n"
                 "from weatherstat.parse import Reading, parse_reading\nfrom weatherstat.stations import Station")
    files = {
        "README.md": "# weatherstat\n\nDaily and monthly statistics from DWD-style station exports.\n\n"
                     "```\nweatherstat daily data/station-0412.csv\n```\n",
        "pyproject.toml": '[project]\nname = "weatherstat"\nversion = "0.3.0"\nrequires-python = ">=3.11"\n\n'
                          '[project.scripts]\nweatherstat = "weatherstat.cli:main"\n',
        f"{pkg}/__init__.py": '"""Station statistics."""\n',
        f"{pkg}/errors.py": '"""Errors of weatherstat."""\n\n\nclass ParseError(ValueError):\n    """A row of a '
                            'station file cannot be read."""\n\n\nclass UnknownStation(KeyError):\n    """No '
                            'metadata for this station id."""\n\n\nclass GapTooLarge(ValueError):\n    """Too many '
                            'missing readings for a meaningful statistic."""\n',
        f"{pkg}/stations.py": w.module("Station metadata (id, name, unit, position).", WEATHER_IMPORTS + own, [], 2, 3),
        f"{pkg}/parse.py": w.module("Reading station CSV exports.",
                                    WEATHER_IMPORTS + own + ["from weatherstat.stations import Station"],
                                    [PARSE_BLOCK], 0, 4),
        f"{pkg}/aggregate.py": w.module("Aggregations over readings: daily, monthly, extremes.",
                                        WEATHER_IMPORTS + own + ["from weatherstat.parse import Reading"],
                                        [AGGREGATE_BLOCK], 1, 4),
        f"{pkg}/units.py": w.module("Unit conversions between what stations report and what reports show.",
                                    WEATHER_IMPORTS + own, [], 0, 3),
        f"{pkg}/cli.py": w.module("The `weatherstat` command line.",
                                  ["import argparse", "import logging", "import sys",
                                   "from collections.abc import Iterable, Sequence", "from pathlib import Path", ""]
                                  + own + [
                                      "from weatherstat.aggregate import daily_means, format_daily, format_monthly",
                                      "from weatherstat.parse import read_station_file",
                                      "from weatherstat.stations import lookup_station"],
                                  [WEATHER_CLI_BLOCK], 0, 4),
        "tests/test_units.py": w.test_module("weatherstat.units", ["to_kelvin", "convert"], 6),
    }
    for path, block in (("tests/test_parse.py", PARSE_TESTS), ("tests/test_aggregate.py", AGGREGATE_TESTS)):
        files[path] = (f'"""Tests for weatherstat.{path[11:-3]}."""\n\nfrom __future__ import annotations\n\n'
                       f"{test_head}\n\n\n{block}\n")
    return Repo("/home/dev/weatherstat", files)


# --- sessions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    tool: str
    args: dict
    result: str | None = None  # None: computed from the repository


TODO_RESULT = ("Todos have been modified successfully. Ensure that you continue to use the todo list to track "
               "your progress. Please proceed with the current tasks if applicable")


class Session:
    """One client session: each turn is the previous request plus the assistant's message and the
    tool results (or a new user message); `replace` rewrites earlier messages as some clients do."""

    def __init__(self, name: str, repo: Repo, rng: random.Random, first: list[dict]):
        self.name = name
        self.repo = repo
        self.rng = rng
        self.messages = copy.deepcopy(first)
        self.turns: list[dict] = [{"session": name, "append": copy.deepcopy(first), "max_tokens": MAX_TOKENS}]
        self._replace: dict[int, dict] = {}

    def step(self, reasoning: str, calls: list[Call], content: str | None = None, note: str = "") -> None:
        """The assistant called tools; the client sends their results."""
        tool_calls = [{"id": self._call_id(), "type": "function",
                       "function": {"name": c.tool, "arguments": json.dumps(c.args, ensure_ascii=False)}}
                      for c in calls]
        message = {"role": "assistant", "content": content, "reasoning_content": reasoning, "tool_calls": tool_calls}
        results = [{"role": "tool", "tool_call_id": tc["id"], "content": self._execute(c)}
                   for tc, c in zip(tool_calls, calls)]
        self._turn([message, *results], note)

    def answer_then_ask(self, reasoning: str, answer: str, question: str, note: str = "") -> None:
        """The assistant answered in text; the user follows up."""
        message = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
        self._turn([message, {"role": "user", "content": question}], note)

    def replace(self, index: int, message: dict) -> None:
        """Rewrite message `index` in the next request."""
        self._replace[index] = message

    def strip_reasoning(self) -> None:
        """Drop reasoning_content from the assistant messages sent so far: with the next request, only
        the newest assistant message keeps it (clients that keep the latest reasoning only)."""
        for i, m in enumerate(self.messages):
            if m["role"] == "assistant" and "reasoning_content" in m:
                self.replace(i, {k: v for k, v in m.items() if k != "reasoning_content"})

    def _turn(self, append: list[dict], note: str) -> None:
        turn: dict = {"session": self.name}
        if self._replace:
            turn["replace"] = {str(i): m for i, m in sorted(self._replace.items())}
            for i, m in self._replace.items():
                self.messages[i] = m
            self._replace = {}
        turn["append"] = append
        if note:
            turn["note"] = note
        turn["max_tokens"] = MAX_TOKENS
        self.messages += copy.deepcopy(append)
        self.turns.append(turn)

    def _call_id(self) -> str:
        return "call_" + "".join(self.rng.choices(string.ascii_letters + string.digits, k=24))

    def _execute(self, call: Call) -> str:
        if call.result is not None:
            return call.result
        a, repo = call.args, self.repo
        if call.tool == "read_file":
            return repo.read(a["path"], a.get("offset", 1), a.get("limit", 2000))
        if call.tool == "edit_file":
            return repo.edit(a["path"], a["old_string"], a["new_string"])
        if call.tool == "write_file":
            return repo.write(a["path"], a["content"])
        if call.tool == "grep":
            return repo.grep(a["pattern"], a.get("path", ""), a.get("glob", "*"))
        if call.tool == "list_dir":
            return repo.tree(a["path"], a.get("depth", 2))
        if call.tool == "glob":
            return "\n".join(p for p in repo.files if _glob_match(p, a["pattern"])) or "No files found"
        if call.tool == "todo_write":
            return TODO_RESULT
        raise ValueError(f"no simulated result for tool {call.tool!r}: give the call a result")


def system_message(extra: str = "") -> dict:
    return {"role": "system", "content": SYSTEM_PROMPT + extra}


def task_message(repo: Repo, task: str, today: str = "2026-11-23") -> dict:
    """The first user message: environment block, project instructions (if any), the task."""
    env = (f"<environment>\nWorking directory: {repo.root}\nPlatform: linux\nShell: bash\n"
           f"Git: branch main, working tree clean\nToday's date: {today}\n</environment>\n\n")
    env += f"<repo-map>\n{repo_map(repo)}\n</repo-map>\n\n"
    instructions = repo.files.get("AGENTS.md")
    if instructions:
        env += f'<project-instructions source="AGENTS.md">\n{instructions}</project-instructions>\n\n'
    return {"role": "user", "content": env + task}

def repo_map(repo: Repo) -> str:
    """Every file, and for Python sources their classes and function signatures (what agents prepend)."""
    out = []
    for path, text in repo.files.items():
        out.append(f"{path}:" if path.endswith(".py") and path.startswith("src/") else path)
        if not (path.endswith(".py") and path.startswith("src/")):
            continue
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef):
                out.append(f"│class {node.name}:")
                out += [f"│    {_signature(f)}" for f in node.body if isinstance(f, ast.FunctionDef)]
            elif isinstance(node, ast.FunctionDef):
                out.append(f"│{_signature(node)}")
    return "\n".join(out)


def _signature(node: ast.FunctionDef) -> str:
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"def {node.name}({ast.unparse(node.args)}){returns}"


# --- story 1: per-line VAT rounding in invoicekit ----------------------------------------------

ROUNDING_TASK = (
    "Customers keep reporting that the VAT in the invoice footer is sometimes one cent off from the sum of "
    "the VAT column in the line table (example: INV-2041, four lines, footer says 0.14 EUR, the lines add "
    "up to 0.13 EUR). Our accountant confirmed the rule in AGENTS.md: VAT is rounded per line and the "
    "invoice VAT is the sum of the rounded line amounts. Please fix compute_totals and whatever else "
    "depends on the old behaviour, add regression tests, update the changelog, and make sure the whole "
    "test suite passes."
)

OLD_TOTALS = TAX_BLOCK[TAX_BLOCK.index("def compute_totals") : TAX_BLOCK.index("\n\n\ndef tax_breakdown")]

NEW_TOTALS = '''def compute_totals(invoice: Invoice, rates: Mapping[str, TaxRate]) -> Totals:
    """Net, tax and gross of an invoice in its currency, rounded to the cent.

    VAT is rounded per line (UStG section 14) and the invoice VAT is the sum of the rounded line
    taxes, so the footer always equals the sum of the VAT column printed on the lines.
    """
    net = Decimal("0")
    tax = Decimal("0")
    for line in invoice.lines:
        net += line_net(line)
        tax += line_tax(line, _rate_for(line, rates))
    net = round_money(net)
    return Totals(net=net, tax=tax, gross=net + tax)


def line_tax(line: Line, rate: TaxRate) -> Decimal:
    """VAT of one line, rounded half-up to the cent."""
    return round_money(line_net(line) * rate.factor)'''

REGRESSION_TESTS = '''"""Regression tests for per-line VAT rounding (INV-2041)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from invoicekit.models import Invoice, Line
from invoicekit.render import render_lines, render_totals
from invoicekit.tax import TaxRate, compute_totals, line_tax, tax_breakdown

RATES = {"S": TaxRate("S", Decimal("19")), "R": TaxRate("R", Decimal("7"))}


def invoice_of(*lines: tuple[str, str, str]) -> Invoice:
    return Invoice(
        number="INV-2041", customer_id="C-104", issued_on=date(2026, 11, 2), currency="EUR",
        lines=tuple(Line(i, f"item {i}", Decimal(q), Decimal(p), code) for i, (q, p, code) in enumerate(lines, 1)),
    )


INV_2041 = invoice_of(("1", "0.13", "S"), ("1", "0.13", "S"), ("1", "0.13", "S"), ("1", "1.00", "R"))


@pytest.mark.parametrize(
    "quantity, price, code, expected",
    [("1", "0.13", "S", "0.02"), ("1", "0.05", "S", "0.01"), ("2.5", "0.21", "R", "0.03"), ("3", "9.99", "S", "5.69")],
)
def test_line_tax_rounds_half_up(quantity, price, code, expected):
    line = Line(1, "x", Decimal(quantity), Decimal(price), code)
    assert line_tax(line, RATES[code]) == Decimal(expected)


def test_inv_2041_footer_equals_line_sum():
    totals = compute_totals(INV_2041, RATES)
    assert totals.tax == Decimal("0.13")
    assert totals.gross == Decimal("1.52")


def test_inv_2041_breakdown_sums_to_footer():
    assert sum(tax_breakdown(INV_2041, RATES).values()) == compute_totals(INV_2041, RATES).tax


def test_inv_2041_rendered_vat_column_matches_footer():
    column = [Decimal(row.split()[-1]) for row in render_lines(INV_2041, RATES)[1:]]
    assert sum(column) == compute_totals(INV_2041, RATES).tax
    assert render_totals(INV_2041, RATES)[-1] == "Total               1,52 EUR"
'''

DIFF_STAT = """ CHANGELOG.md                         |  6 ++++
 src/invoicekit/render.py             |  3 +-
 src/invoicekit/tax.py                | 24 +++++++++++------
 tests/test_render.py                 |  4 +--
 tests/test_tax.py                    |  7 +++++
 tests/test_tax_rounding.py           | 48 ++++++++++++++++++++++++++++++++++++
 6 files changed, 79 insertions(+), 13 deletions(-)"""


def rounding_session(name: str, rng: random.Random) -> Session:
    """The agent fixes per-line VAT rounding: explore, reproduce, fix, repair dependants, test, document."""
    repo = invoice_repo(rng)
    s = Session(name, repo, rng, [system_message(), task_message(repo, ROUNDING_TASK)])
    tax_tests = ["tests/test_tax.py"]
    all_tests = test_files(repo)
    todo = ["Reproduce the INV-2041 discrepancy", "Round VAT per line in compute_totals and tax_breakdown",
            "Fix dependants (render, reminders, CLI) and their tests", "Add regression tests",
            "Update CHANGELOG and run the whole suite"]

    def todos(done: int) -> Call:
        items = [{"content": t, "status": "completed" if i < done else "in_progress" if i == done else "pending"}
                 for i, t in enumerate(todo)]
        return Call("todo_write", {"todos": items})

    s.step("Start by getting an overview of the repository layout.", [Call("list_dir", {"path": ".", "depth": 3})])
    s.step("Several steps; track them.", [todos(0)], "I'll track this in a short plan.")
    s.step("Find the definition and every caller of compute_totals.",
           [Call("grep", {"pattern": r"compute_totals|tax_breakdown", "glob": "*.py"})])
    s.step("tax.py holds both functions; read it.", [Call("read_file", {"path": "src/invoicekit/tax.py"})])
    s.step("compute_totals sums unrounded line taxes and rounds once at the end; that is the bug. "
           "Check round_money before changing anything.",
           [Call("read_file", {"path": "src/invoicekit/money.py"})],
           "The footer rounds the summed tax once. Let me check the money helpers first.")
    s.step("round_money is half-up to the cent, as required. Now the Line model: quantity and discount types.",
           [Call("read_file", {"path": "src/invoicekit/models.py"})])
    s.step("Run the existing tax tests to see the baseline.",
           [Call("run_tests", {"targets": tax_tests}, pytest_output(repo, tax_tests, [], 0.31))])
    s.step("All green, so nothing covers the per-line rule. Read the test file to add a regression test in its style.",
           [Call("read_file", {"path": "tests/test_tax.py"})])
    s.step("Who else rounds? Look for round_money callers.",
           [Call("grep", {"pattern": r"round_money\(", "path": "src/"})])
    s.step("render.py computes a per-line VAT column itself; read it.",
           [Call("read_file", {"path": "src/invoicekit/render.py"})])
    s.step("Reproduce INV-2041 numerically.",
           [Call("run_command", {"command": "python -c \"from decimal import Decimal as D; "
                 "from tests.test_tax import make_invoice, RATES; from invoicekit.tax import compute_totals; "
                 "from invoicekit.render import render_lines; inv = make_invoice(('1','0.13','S'),"
                 "('1','0.13','S'),('1','0.13','S'),('1','1.00','R')); print(compute_totals(inv, RATES)); "
                 "print([r.split()[-1] for r in render_lines(inv, RATES)[1:]])\""},
                 "exit status 0\nstdout:\nTotals(net=Decimal('1.39'), tax=Decimal('0.14'), "
                 "gross=Decimal('1.53'))\n['0.02', '0.02', '0.02', '0.07']\nstderr:\n")],
           "Reproduced: footer VAT 0.14, line column sums to 0.13.")
    s.step("Write the failing regression test first.",
           [Call("edit_file", {"path": "tests/test_tax.py",
                               "old_string": "def test_zero_rate_has_no_tax():",
                               "new_string": "def test_tax_is_sum_of_rounded_line_taxes():\n"
                                             "    invoice = make_invoice((\"1\", \"0.13\", \"S\"), "
                                             "(\"1\", \"0.13\", \"S\"), (\"1\", \"0.13\", \"S\"))\n"
                                             "    assert compute_totals(invoice, RATES).tax == Decimal(\"0.06\")\n\n\n"
                                             "def test_zero_rate_has_no_tax():"})])
    s.step("Run just the new test; it must fail with 0.07 != 0.06.",
           [Call("run_tests", {"targets": ["tests/test_tax.py::test_tax_is_sum_of_rounded_line_taxes"]},
                 pytest_output(repo, ["tests/test_tax.py::test_tax_is_sum_of_rounded_line_taxes"], [Failure(
                     "test_tax_is_sum_of_rounded_line_taxes", "assert compute_totals",
                     ("AssertionError: assert Decimal('0.07') == Decimal('0.06')",
                      " +  where Decimal('0.07') = Totals(net=Decimal('0.39'), tax=Decimal('0.07'), "
                      "gross=Decimal('0.46')).tax"))], 0.12))])
    s.step("Now round per line: add line_tax and use it in compute_totals.",
           [Call("edit_file", {"path": "src/invoicekit/tax.py",
                               "old_string": OLD_TOTALS,
                               "new_string": NEW_TOTALS})])
    s.step("Run the tax tests again.",
           [Call("run_tests", {"targets": tax_tests}, pytest_output(repo, tax_tests, [Failure(
               "test_breakdown_matches_totals", "assert sum(",
               ("AssertionError: assert Decimal('0.14') == Decimal('0.13')",
                " +  where Decimal('0.14') = sum(dict_values([Decimal('0.07'), Decimal('0.07')]))",
                " +  and   Decimal('0.13') = Totals(net=Decimal('1.39'), tax=Decimal('0.13'), "
                "gross=Decimal('1.52')).tax"))], 0.29))])
    s.step("tax_breakdown still rounds per rate group. Look at it again after the edit.",
           [Call("read_file", {"path": "src/invoicekit/tax.py", "offset": 30, "limit": 45})])
    s.step("Sum rounded line taxes per rate as well.",
           [Call("edit_file", {"path": "src/invoicekit/tax.py",
                               "old_string": "        per_rate[rate.code] += line_net(line) * rate.factor\n"
                                             "    return {code: round_money(amount) "
                                             "for code, amount in sorted(per_rate.items())}",
                               "new_string": "        per_rate[rate.code] += line_tax(line, rate)\n"
                                             "    return dict(sorted(per_rate.items()))"})])
    s.step("Tax tests again.", [Call("run_tests", {"targets": tax_tests}, pytest_output(repo, tax_tests, [], 0.27))])
    s.step("Core fix done; move on to dependants.", [todos(2)])
    s.step("Run the whole suite to find what depended on the old rounding.",
           [Call("run_tests", {}, pytest_output(repo, all_tests, [Failure(
               "test_render_totals_block", "assert rows[-1]",
               ("AssertionError: assert 'Total               1,52 EUR' == 'Total               1,53 EUR'",
                "  ", "  - Total               1,53 EUR", "  ?                        ^",
                "  + Total               1,52 EUR", "  ?                        ^"))], 0.88))])
    s.step("The golden string encodes the old buggy gross. Read the render tests.",
           [Call("read_file", {"path": "tests/test_render.py"})])
    s.step("Find other places that compute line VAT on their own.",
           [Call("grep", {"pattern": r"\.factor", "path": "src/"})])
    s.step("render_lines duplicates the rounding; reuse line_tax so there is one rule.",
           [Call("edit_file", {"path": "src/invoicekit/render.py",
                               "old_string": "        vat = round_money(net * rates[line.tax_code].factor)",
                               "new_string": "        vat = line_tax(line, rates[line.tax_code])"}),
            Call("edit_file", {"path": "src/invoicekit/render.py",
                               "old_string": "from invoicekit.tax import TaxRate, compute_totals, line_net, "
                                             "tax_breakdown",
                               "new_string": "from invoicekit.tax import TaxRate, compute_totals, line_net, "
                                             "line_tax, tax_breakdown"})])
    s.step("Update the golden total: 1.39 net + 0.13 VAT = 1.52; the old 1.53 was the bug.",
           [Call("edit_file", {"path": "tests/test_render.py",
                               "old_string": '    assert rows[-1] == "Total               1,53 EUR"',
                               "new_string": '    assert rows[-1] == "Total               1,52 EUR"  '
                                             "# INV-2041: VAT rounded per line"})])
    s.step("Render tests.", [Call("run_tests", {"targets": ["tests/test_render.py"]},
                                  pytest_output(repo, ["tests/test_render.py"], [], 0.22))])
    s.step("Check the reminders module, which also calls compute_totals.",
           [Call("read_file", {"path": "src/invoicekit/reminders.py"})])
    s.step("Reminders only compare gross amounts; nothing to change. Check how the CLI prints totals.",
           [Call("grep", {"pattern": r"render_totals|compute_totals", "path": "src/invoicekit/cli.py", "context": 2})])
    s.step("The grep output is too narrow to see how `show` builds its rate table; read the whole CLI module.",
           [Call("read_file", {"path": "src/invoicekit/cli.py"})])
    s.step("Run the CLI on the example from the report.",
           [Call("run_command", {"command": "python -m invoicekit.cli show examples/INV-2041.json"},
                 "exit status 0\nstdout:\nInvoice INV-2041  customer C-104  issued 2026-11-02\n\n"
                 "Pos  Description                           Qty      Price        Net      VAT\n"
                 "  1  Screws M4 (pack)                        1       0.13       0.13     0.02\n"
                 "  2  Screws M5 (pack)                        1       0.13       0.13     0.02\n"
                 "  3  Washers (pack)                          1       0.13       0.13     0.02\n"
                 "  4  Shipping                                1       1.00       1.00     0.07\n\n"
                 "Net                 1,39 EUR\nVAT 7%              0,07 EUR\nVAT 19%             0,06 EUR\n"
                 "Total               1,52 EUR\nstderr:\n")],
           "Footer and line column agree now (0.13 EUR VAT).")
    s.step("Add a dedicated regression module for INV-2041 and the rounding table.",
           [Call("write_file", {"path": "tests/test_tax_rounding.py", "content": REGRESSION_TESTS})])
    s.step("Run it.", [Call("run_tests", {"targets": ["tests/test_tax_rounding.py"]},
                            pytest_output(repo, ["tests/test_tax_rounding.py"], [Failure(
                                "test_line_tax_rounds_half_up", "assert line_tax(",
                                ("AssertionError: assert Decimal('0.04') == Decimal('0.03')",
                                 " +  where Decimal('0.04') = line_tax(Line(position=1, description='x', "
                                 "quantity=Decimal('2.5'), unit_price=Decimal('0.21'), tax_code='R', "
                                 "discount_percent=Decimal('0')), TaxRate(code='R', percent=Decimal('7'), "
                                 "region='DE'))"), case=2, case_id="2.5-0.21-R-0.03",
                                params="quantity = '2.5', price = '0.21', code = 'R', expected = '0.03'")], 0.19))])
    s.step("2.5 x 0.21 = 0.525; x 0.07 = 0.03675, which rounds half-up to 0.04. "
           "My expected value was wrong, not the code.",
           [Call("edit_file", {"path": "tests/test_tax_rounding.py",
                               "old_string": '("2.5", "0.21", "R", "0.03")',
                               "new_string": '("2.5", "0.21", "R", "0.04")'})])
    s.step("Run it again.", [Call("run_tests", {"targets": ["tests/test_tax_rounding.py"]},
                                  pytest_output(repo, ["tests/test_tax_rounding.py"], [], 0.18))])
    s.step("Tests done; changelog next.", [todos(4)])
    s.step("Read the changelog to follow its format.", [Call("read_file", {"path": "CHANGELOG.md"})])
    s.step("Add the entry under Unreleased.",
           [Call("edit_file", {"path": "CHANGELOG.md", "old_string": "## Unreleased\n",
                               "new_string": "## Unreleased\n\n- Fix: VAT is rounded per invoice line and the "
                                             "invoice VAT is the sum of the rounded line amounts (UStG section 14); "
                                             "footers could be one cent off the line table before (INV-2041). "
                                             "Golden totals in tests/test_render.py changed accordingly.\n"
                                             "- New: `invoicekit.tax.line_tax`.\n"})])
    s.step("Whole suite before finishing.",
           [Call("run_tests", {}, pytest_output(repo, test_files(repo), [], 0.93))])
    s.step("Look at the size of the change.", [Call("run_command", {"command": "git diff --stat"},
                                                    "exit status 0\nstdout:\n" + DIFF_STAT + "\nstderr:\n")])
    s.step("Export line_tax next to compute_totals since it is public now.",
           [Call("edit_file", {"path": "src/invoicekit/__init__.py",
                               "old_string": "from invoicekit.tax import TaxRate, compute_totals, tax_breakdown",
                               "new_string": "from invoicekit.tax import TaxRate, compute_totals, line_tax, "
                                             "tax_breakdown"})])
    s.step("Type check the package.", [Call("run_command", {"command": "mypy src"}, "exit status 0\nstdout:\n"
                                            "Success: no issues found in 10 source files\nstderr:\n")])
    s.step("All steps complete.", [todos(len(todo))])
    return s



# --- story 2: JSON output for the CLI, sent by a client that rewrites history --------------------

JSON_TASK = (
    "Add a `--format [text|json]` option to `invoicekit show`. JSON output: number, customer, issued date, "
    "currency, the lines (position, description, quantity, unit price, net, vat) and the totals (net, tax, "
    "gross), amounts as strings so no precision is lost. Text stays the default. Add tests for the new output."
)

RENDER_TAIL = RENDER_BLOCK[RENDER_BLOCK.index("    rows.append(f\"{'Total'") :]

RENDER_JSON = '''

def render_json(invoice: Invoice, rates: Mapping[str, TaxRate]) -> dict:
    """The invoice as JSON-ready data; amounts are strings so no precision is lost."""
    totals = compute_totals(invoice, rates)
    lines = [
        {
            "position": line.position,
            "description": line.description,
            "quantity": str(line.quantity),
            "unit_price": str(line.unit_price),
            "net": str(round_money(line_net(line))),
            "vat": str(round_money(line_net(line) * rates[line.tax_code].factor)),
        }
        for line in invoice.lines
    ]
    return {
        "number": invoice.number,
        "customer": invoice.customer_id,
        "issued_on": invoice.issued_on.isoformat(),
        "currency": invoice.currency,
        "lines": lines,
        "totals": {"net": str(totals.net), "tax": str(totals.tax), "gross": str(totals.gross)},
    }'''

SHOW_OLD = '''@click.option("--rates", "rates_path", type=click.Path(path_type=Path), default=None, help="Rate table (JSON).")
def show(path: Path, rates_path: Path | None) -> None:
    """Print one invoice as the PDF would show it."""
    invoice = load_invoice(path)
    rates = load_rates(rates_path)
'''

SHOW_NEW = '''@click.option("--rates", "rates_path", type=click.Path(path_type=Path), default=None, help="Rate table (JSON).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def show(path: Path, rates_path: Path | None, fmt: str) -> None:
    """Print one invoice as the PDF would show it, or as JSON."""
    invoice = load_invoice(path)
    rates = load_rates(rates_path)
    if fmt == "json":
        click.echo(json.dumps(render_json(invoice, rates), indent=2))
        return
'''

JSON_DIFF_STAT = """ CHANGELOG.md              |  2 ++
 src/invoicekit/cli.py     | 19 ++++++++++++++++---
 src/invoicekit/render.py  | 27 +++++++++++++++++++++++++++
 tests/test_cli.py         | 35 +++++++++++++++++++++++++++++++++++
 4 files changed, 80 insertions(+), 3 deletions(-)"""

SHOW_JSON_OUTPUT = """{
  "number": "INV-2041",
  "customer": "C-104",
  "issued_on": "2026-11-02",
  "currency": "EUR",
  "lines": [
    {"position": 1, "description": "Screws M4 (pack)", "quantity": "1", "unit_price": "0.13", "net": "0.13", "vat": "0.02"},
    {"position": 2, "description": "Screws M5 (pack)", "quantity": "1", "unit_price": "0.13", "net": "0.13", "vat": "0.02"},
    {"position": 3, "description": "Washers (pack)", "quantity": "1", "unit_price": "0.13", "net": "0.13", "vat": "0.02"},
    {"position": 4, "description": "Shipping", "quantity": "1", "unit_price": "1.00", "net": "1.00", "vat": "0.07"}
  ],
  "totals": {"net": "1.39", "tax": "0.14", "gross": "1.53"}
}"""

CLI_TESTS = '''"""Tests for the invoicekit command line."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from invoicekit.cli import main

EXAMPLE = Path(__file__).parent.parent / "examples" / "INV-2041.json"


def test_show_text_is_default():
    result = CliRunner().invoke(main, ["show", str(EXAMPLE)])
    assert result.exit_code == 0
    assert result.output.startswith("Invoice INV-2041")


def test_show_json():
    result = CliRunner().invoke(main, ["show", str(EXAMPLE), "--format", "json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["number"] == "INV-2041"
    assert [line["vat"] for line in data["lines"]] == ["0.02", "0.02", "0.02", "0.07"]
    assert data["totals"]["gross"] == "1.53"
'''

LIST_JSON_TEST = '''

def test_list_json():
    result = CliRunner().invoke(main, ["list", "--customer", "C-104", "--format", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert rows[0] == {"number": "INV-2041", "issued_on": "2026-11-02", "customer": "C-104",
                       "currency": "EUR", "gross": "1.53"}
'''


def clock(minute: int) -> str:
    """The volatile system-prompt line some clients add (a timestamp that changes every request)."""
    return f"\n\n# Session\nCurrent time: 2026-11-23 14:{minute:02d}:{(minute * 37) % 60:02d} UTC"


def rewrite_session(rng: random.Random) -> Session:
    """A clean start, then one client rewrite per phase; each turn's note says what changed."""
    repo = invoice_repo(rng)
    s = Session("main", repo, rng, [system_message(clock(2)), task_message(repo, JSON_TASK)])
    cli, render = "src/invoicekit/cli.py", "src/invoicekit/render.py"
    stripped = "client dropped reasoning_content of earlier assistant turns"

    def ticking(minute: int) -> str:
        s.replace(0, system_message(clock(minute)))
        return "system prompt's time line changed"

    s.step("Look at the package first.", [Call("list_dir", {"path": "src/invoicekit", "depth": 1})], note="append-only")
    s.step("The show command lives in cli.py.", [Call("read_file", {"path": cli})], note="append-only")
    s.step("Find the render helpers show uses.", [Call("grep", {"pattern": r"^def render_", "path": "src/"})],
           note="append-only")
    s.step("Read render.py to reuse its numbers for JSON.", [Call("read_file", {"path": render})], note="append-only")
    s.step("Which tests exist?", [Call("glob", {"pattern": "tests/test_*.py"})], note="append-only")
    s.step("No CLI tests yet; look at the render tests for conventions.",
           [Call("read_file", {"path": "tests/test_render.py"})], note="append-only")
    s.strip_reasoning()
    s.step("Add render_json next to render_totals.",
           [Call("edit_file", {"path": render, "old_string": RENDER_TAIL, "new_string": RENDER_TAIL + RENDER_JSON})],
           note=stripped)
    s.strip_reasoning()
    s.step("Wire the option into show.",
           [Call("edit_file", {"path": cli,
                               "old_string": SHOW_OLD, "new_string": SHOW_NEW}),
            Call("edit_file", {"path": cli, "old_string": "from invoicekit.render import render_lines, render_totals",
                               "new_string": "from invoicekit.render import render_json, render_lines, "
                                             "render_totals"})],
           note=stripped)
    s.strip_reasoning()
    s.step("Try it on the example.",
           [Call("run_command", {"command": "python -m invoicekit.cli show examples/INV-2041.json --format json"},
                 f"exit status 0\nstdout:\n{SHOW_JSON_OUTPUT}\nstderr:\n")], note=stripped)
    s.strip_reasoning()
    s.step("Output is right. Add CLI tests with click's runner.",
           [Call("write_file", {"path": "tests/test_cli.py", "content": CLI_TESTS})], note=stripped)
    s.strip_reasoning()
    s.step("Run them.", [Call("run_tests", {"targets": ["tests/test_cli.py"]},
                              pytest_output(repo, ["tests/test_cli.py"], [], 0.35))], note=stripped)
    s.answer_then_ask(
        "Done; summarise.",
        "`invoicekit show --format json` now prints the invoice as JSON (src/invoicekit/render.py: render_json, "
        "src/invoicekit/cli.py: the --format option). Amounts are strings. Tests: tests/test_cli.py, 2 passed.",
        "Thanks! Please also support `--format json` for `invoicekit list` (a JSON array with number, issued "
        "date, customer, currency and gross).",
        note="new user message: the template drops the think blocks of all earlier turns")
    minute = 9
    for reasoning, call in (
        ("Read the list command again.", Call("read_file", {"path": cli, "offset": 40, "limit": 40})),
        ("Add the same option to list.", Call("edit_file", {
            "path": cli,
            "old_string": '@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None)\n'
                          "def list_invoices(customer: str | None, since: datetime | None) -> None:\n",
            "new_string": '@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None)\n'
                          '@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")\n'
                          "def list_invoices(customer: str | None, since: datetime | None, fmt: str) -> None:\n"})),
        ("Collect rows and print them as one array in JSON mode.", Call("edit_file", {
            "path": cli,
            "old_string": "        totals = compute_totals(invoice, rates)\n        click.echo(f\"{invoice.number:<10}",
            "new_string": "        totals = compute_totals(invoice, rates)\n        if fmt == \"json\":\n"
                          "            rows.append({\"number\": invoice.number, \"issued_on\": invoice.issued_on, "
                          "\"customer\": invoice.customer_id, \"currency\": invoice.currency, "
                          "\"gross\": str(totals.gross)})\n"
                          "            continue\n        click.echo(f\"{invoice.number:<10}"})),
        ("Add the test for list.", Call("edit_file", {"path": "tests/test_cli.py",
                                                       "old_string": '    assert data["totals"]["gross"] == "1.53"\n',
                                                       "new_string": '    assert data["totals"]["gross"] == "1.53"\n'
                                                                     + LIST_JSON_TEST})),
        ("Run the CLI tests.", Call("run_tests", {"targets": ["tests/test_cli.py"]}, pytest_output(
            repo, ["tests/test_cli.py"], [Failure("test_list_json", "assert result.exit_code == 0", (
                "AssertionError: assert 1 == 0", " +  where 1 = <Result TypeError('Object of type date is not JSON "
                "serializable')>.exit_code"))], 0.41))),
        ("issued_on must be serialised as ISO text.", Call("edit_file", {
            "path": cli, "old_string": "\"issued_on\": invoice.issued_on, ",
            "new_string": "\"issued_on\": invoice.issued_on.isoformat(), "})),
        ("Run the CLI tests again.", Call("run_tests", {"targets": ["tests/test_cli.py"]},
                                          pytest_output(repo, ["tests/test_cli.py"], [], 0.37))),
    ):
        note = ticking(minute)
        s.step(reasoning, [call], note=note)
        minute += 1
    for reasoning, call in (
        ("Whole suite.", Call("run_tests", {}, pytest_output(repo, test_files(repo), [], 0.97))),
        ("Changelog entry.", Call("read_file", {"path": "CHANGELOG.md"})),
        ("Add it under Unreleased.", Call("edit_file", {
            "path": "CHANGELOG.md", "old_string": "## Unreleased\n",
            "new_string": "## Unreleased\n\n- CLI: `show` and `list` accept `--format json`.\n"})),
        ("Check the diff size.", Call("run_command", {"command": "git diff --stat"},
                                      f"exit status 0\nstdout:\n{JSON_DIFF_STAT}\nstderr:\n")),
    ):
        s.step(reasoning, [call], note="append-only (the time line stopped changing)")
    return s


# --- story 3: missing readings in weatherstat (the second session of the interleaved trace) -------

WEATHER_TASK = (
    "`weatherstat daily data/station-0412.csv` aborts with a parse error since the station had a sensor outage "
    "in March: the export contains rows with an empty value. Empty values should count as missing readings: "
    "skip them, compute each day's mean from the remaining readings, and report a day with no readings at "
    "all as missing (n/a), not as zero. Please fix it and add tests."
)


def weather_session(name: str, rng: random.Random) -> Session:
    repo = weather_repo(rng)
    s = Session(name, repo, rng, [system_message(), task_message(repo, WEATHER_TASK)])
    parse, aggregate = "src/weatherstat/parse.py", "src/weatherstat/aggregate.py"
    tests = ["tests/test_aggregate.py", "tests/test_parse.py", "tests/test_units.py"]
    todo = ["Reproduce the parse error", "Treat empty values as missing readings", "Report days without readings "
            "as n/a", "Tests and README"]

    def todos(done: int) -> Call:
        items = [{"content": t, "status": "completed" if i < done else "in_progress" if i == done else "pending"}
                 for i, t in enumerate(todo)]
        return Call("todo_write", {"todos": items})

    s.step("Get the layout.", [Call("list_dir", {"path": ".", "depth": 3})])
    s.step("Plan the steps.", [todos(0)])
    s.step("Where are values converted?", [Call("grep", {"pattern": r"float\(", "path": "src/"})])
    s.step("parse_reading raises ParseError on empty strings; read the module.", [Call("read_file", {"path": parse})])
    s.step("And the aggregation that would see missing values.", [Call("read_file", {"path": aggregate})])
    s.step("Who calls the aggregation and prints the error?",
           [Call("grep", {"pattern": r"daily_means|format_daily|ParseError", "path": "src/weatherstat/cli.py"})])
    s.step("Reproduce.", [Call("run_command", {"command": "python -m weatherstat.cli daily data/station-0412.csv"},
                               "exit status 1\nstdout:\nstderr:\nweatherstat: error: data/station-0412.csv: "
                               "line 1437: bad value ''\n")])
    s.step("Reproduced. Baseline of the parse tests before touching anything.",
           [Call("run_tests", {"targets": ["tests/test_parse.py"]},
                 pytest_output(repo, ["tests/test_parse.py"], [], 0.09))])
    s.step("Is a quality value of 'missing' used anywhere already?",
           [Call("grep", {"pattern": r"quality", "path": "src/"})])
    s.step("Check the parse tests before changing behaviour they pin down.",
           [Call("read_file", {"path": "tests/test_parse.py"})])
    s.step("Empty value means missing: value None, and Reading.value becomes optional.",
           [Call("edit_file", {"path": parse,
                               "old_string": "    try:\n        value = float(row[\"value\"])\n",
                               "new_string": "    raw = row[\"value\"].strip()\n    if not raw:\n"
                                             "        return Reading(station.station_id, timestamp, None, "
                                             "station.unit, \"missing\")\n    try:\n        value = float(raw)\n"}),
            Call("edit_file", {"path": parse, "old_string": "    value: float\n    unit: str\n",
                               "new_string": "    value: float | None  # None: the station reported no value\n"
                                             "    unit: str\n"})])
    s.step("Parsing done; aggregation next.", [todos(2)])
    s.step("Means skip missing readings; a day with none maps to None, printed as n/a.",
           [Call("edit_file", {"path": aggregate,
                               "old_string": AGGREGATE_BLOCK,
                               "new_string": AGGREGATE_FIXED})])
    s.step("Aggregation tests first.", [Call("run_tests", {"targets": ["tests/test_aggregate.py"]},
                                              pytest_output(repo, ["tests/test_aggregate.py"], [], 0.08))])
    s.step("Run the tests.", [Call("run_tests", {}, pytest_output(repo, tests, [Failure(
        "test_parse_reading_rejects_bad_values", "parse_reading(row(raw)",
        ("Failed: DID NOT RAISE <class 'weatherstat.errors.ParseError'>",), case=1, case_id="",
        params="raw = ''")], 0.24))])
    s.step("That test pinned the old behaviour: '' is now a missing reading, not an error. "
           "Re-read it to edit precisely.",
           [Call("read_file", {"path": "tests/test_parse.py", "offset": 20})])
    s.step("Drop '' from the bad values and test the new meaning.",
           [Call("edit_file", {"path": "tests/test_parse.py",
                               "old_string": '@pytest.mark.parametrize("raw", ["abc", "", "1,5"])',
                               "new_string": '@pytest.mark.parametrize("raw", ["abc", "1,5", "--"])'}),
            Call("edit_file", {"path": "tests/test_parse.py",
                               "old_string": "def test_parse_reading_is_utc():",
                               "new_string": "@pytest.mark.parametrize(\"raw\", [\"\", \"  \"])\n"
                                             "def test_empty_value_is_missing(raw):\n"
                                             "    reading = parse_reading(row(raw), STATION, 2)\n"
                                             "    assert reading.value is None and reading.quality == \"missing\"\n\n\n"
                                             "def test_parse_reading_is_utc():"})])
    s.step("Cover the aggregation too.",
           [Call("edit_file", {"path": "tests/test_aggregate.py",
                               "old_string": "def test_format_daily():",
                               "new_string": "def test_daily_means_skip_missing_and_mark_empty_days():\n"
                                             "    means = daily_means([reading(1, 6, 4.0), reading(1, 12, None), "
                                             "reading(2, 6, None)])\n"
                                             "    assert means == {date(2026, 3, 1): 4.0, date(2026, 3, 2): None}\n"
                                             "    assert format_daily(means) == "
                                             "[\"2026-03-01  4.00\", \"2026-03-02  n/a\"]\n\n\n"
                                             "def test_format_daily():"})])
    s.step("Run everything.", [Call("run_tests", {}, pytest_output(repo, tests, [], 0.26))])
    s.step("Type check: Reading.value is optional now.",
           [Call("run_command", {"command": "mypy src"},
                 "exit status 0\nstdout:\nSuccess: no issues found in 7 source files\nstderr:\n")])
    s.step("Code and tests done.", [todos(3)])
    s.step("Check the real file now.",
           [Call("run_command", {"command": "python -m weatherstat.cli daily data/station-0412.csv | sed -n '60,66p'"},
                 "exit status 0\nstdout:\n2026-03-01  3.87\n2026-03-02  4.12\n2026-03-03  n/a\n2026-03-04  n/a\n"
                 "2026-03-05  2.95\n2026-03-06  3.40\n2026-03-07  4.01\nstderr:\n")],
           "The outage days now show as n/a.")
    s.step("Monthly statistics read the same readings; make sure they still run.",
           [Call("run_command", {"command": "python -m weatherstat.cli monthly data/station-0412.csv"},
                 "exit status 0\nstdout:\n2026-01  -1.84\n2026-02  0.37\n2026-03  3.62\nstderr:\n")])
    s.step("Document the n/a output in the README.", [Call("read_file", {"path": "README.md"})])
    s.step("Add one sentence.", [Call("edit_file", {"path": "README.md", "old_string": "```\nweatherstat daily "
                                                      "data/station-0412.csv\n```\n",
                                                      "new_string": "```\nweatherstat daily data/station-0412.csv\n```"
                                                      "\n\nEmpty values in an export are missing readings: a day's "
                                                      "mean uses the remaining readings, and a day without any "
                                                      "prints `n/a`.\n"})])
    s.step("Review the change.", [Call("run_command", {"command": "git diff --stat"},
                                       f"exit status 0\nstdout:\n{WEATHER_DIFF_STAT}\nstderr:\n")])
    s.step("Everything is done.", [todos(len(todo))])
    return s


# --- the three traces --------------------------------------------------------------------------


def coding_agent_trace() -> dict:
    s = rounding_session("main", random.Random(1001))
    return _trace("coding_agent", "A coding agent fixes a rounding bug in a Python package: one task, a tool loop of "
                  f"{len(s.turns)} requests (reads, greps, edits, pytest runs); every request appends to the last, "
                  "growing past 30k prompt tokens.", s.turns)


def history_rewrite_trace() -> dict:
    s = rewrite_session(random.Random(2002))
    return _trace("history_rewrite", "A coding session whose client rewrites history, one kind per phase (see each "
                  "turn's note): append-only; reasoning_content dropped from earlier assistant turns; a new user "
                  "message (the template then drops earlier think blocks); a system-prompt time line that changes "
                  "every request; append-only again.", s.turns, check_targets=False)


def interleaved_trace() -> dict:
    b = weather_session("B", random.Random(3004))
    a = rounding_session("A", random.Random(3003))  # its first len(b.turns) requests
    turns = [t for pair in zip(a.turns, b.turns) for t in pair]
    return _trace("interleaved", "Two coding sessions on two repositories (same client: same tools and system "
                  "prompt) whose requests alternate A1, B1, A2, B2, ...; each grows on its own.", turns)


def _trace(name: str, description: str, turns: list[dict], check_targets: bool = True) -> dict:
    """`check_targets` false: the benchmark reports reuse without a pass/fail verdict."""
    trace = {"name": name, "description": description, "tools": TOOLS, "turns": turns}
    return trace if check_targets else {**trace, "check_targets": False}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    for trace in (coding_agent_trace(), history_rewrite_trace(), interleaved_trace()):
        path = args.out / f"{trace['name']}.json"
        path.write_text(json.dumps(trace, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path}: {len(trace['turns'])} turns, {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
