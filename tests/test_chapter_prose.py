"""The chapters' prose states no numeric result that is neither the papers' nor this run's.

Every percentage in a chapter's markdown must be one of

(a) **the paper's, attributed beside it**: the unit of text (see below) that contains it also
    contains one of ``paper``, ``Paper``, ``Table``, ``Fig.``, ``{cite``, ``their ``, ``authors``,
    ``Hirano``, ``Minagi`` or ``Tsai``;
(b) **a setting**, not a result: ``ζ``, ``\\zeta``, ``zeta``, ``early`` (the early stop) or ``≥``
    (a threshold an exercise sets) stands at most a few characters before it, or ``shifts`` or
    ``of the epochs`` at most a few characters after it (``5 % shifts``,
    ``80 % / 90 % of the epochs``), or it is part of ``1 % of its candidates`` (the early-stop
    rule);
(c) **computed by this run**: written as a MyST role ``{glue:text}`key:format``` whose value a
    code cell of the same chapter glues with ``glue("key", ...)``. Percentages inside such roles
    are not checked by the first rule; the second test checks that every role has its ``glue``.

A *unit* is a paragraph (text between blank lines) or, inside a paragraph, one list item (a line
starting with ``* ``, ``- `` or ``1. `` and its continuation lines), so an attribution in one
bullet does not cover the next. A number typed into the prose from some earlier run has neither
an attribution nor a setting word next to it, and fails with the chapter and the offending text.
The rule is deliberately simple: it only looks at percentages, the form most results take here.
"""

import json
import re
from pathlib import Path

import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("*.ipynb"))

PERCENT = re.compile(r"\d(?:[\d.,]*\d)?[ \u00a0\u202f]?\\?%")
GLUE_ROLE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`]*)`")
ATTRIBUTION = (
    "paper",
    "Paper",
    "Table",
    "Fig.",
    "{cite",
    "their ",
    "authors",
    "Hirano",
    "Minagi",
    "Tsai",
)
SETTING_BEFORE = ("ζ", "\\zeta", "zeta", "early", "≥")
SETTING_AFTER = ("shifts", "of the epochs")
SETTING_PHRASES = ("1 % of its candidates",)
BEFORE, AFTER = 20, 25  # "a few characters" around the percentage
LIST_ITEM = re.compile(r"^\s*(?:[*-]|\d+\.)\s")


def _cells(path, kind):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == kind]


def units(markdown: str) -> list[str]:
    """Paragraphs, with every list item of a paragraph as a unit of its own."""
    out = []
    for paragraph in re.split(r"\n\s*\n", markdown):
        current = []
        for line in paragraph.splitlines():
            if LIST_ITEM.match(line) and current:
                out.append("\n".join(current))
                current = []
            current.append(line)
        if current:
            out.append("\n".join(current))
    return [u for u in out if u.strip()]


def unexplained_percentages(unit: str) -> list[str]:
    """The percentages of ``unit`` that are neither attributed, a setting nor glued."""
    text = GLUE_ROLE.sub("GLUED", unit)
    if any(word in text for word in ATTRIBUTION):
        return []
    protected = set()
    for phrase in SETTING_PHRASES:
        for hit in re.finditer(re.escape(phrase), text):
            protected.update(range(hit.start(), hit.end()))
    bad = []
    for hit in PERCENT.finditer(text):
        if hit.start() in protected:
            continue
        before = text[max(0, hit.start() - BEFORE) : hit.start()]
        after = text[hit.end() : hit.end() + AFTER]
        if any(word in before for word in SETTING_BEFORE) or any(
            word in after for word in SETTING_AFTER
        ):
            continue
        bad.append(hit.group())
    return bad


def test_the_rule_itself():
    assert unexplained_percentages("The model reached 86 % accuracy.") == ["86 %"]
    assert unexplained_percentages("It fooled 80 % of the images (paper 000, Table 1).") == []
    assert unexplained_percentages("At ζ = 4 % the UAP is small.") == []
    assert unexplained_percentages("random 5 % shifts, steps at 80 % / 90 % of the epochs") == []
    assert unexplained_percentages("this run: {glue:text}`rate_before:.0%` before") == []
    assert units("* one 5 % (paper 000)\n* two 7 %\n\nthree") == [
        "* one 5 % (paper 000)",
        "* two 7 %",
        "three",
    ]


@pytest.mark.skipif(not CHAPTERS, reason="chapters/ has no notebooks yet")
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_percentages_in_prose_are_attributed_settings_or_glued(path):
    problems = []
    for markdown in _cells(path, "markdown"):
        for unit in units(markdown):
            bad = unexplained_percentages(unit)
            if bad:
                problems.append(f"{', '.join(bad)} in: {' '.join(unit.split())[:300]}")
    assert not problems, (
        f"{path.name}: percentages that are neither a paper's (attributed), a setting, "
        "nor glued from this run:\n" + "\n".join(problems)
    )


@pytest.mark.skipif(not CHAPTERS, reason="chapters/ has no notebooks yet")
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_glue_role_has_its_glue_call(path):
    code = "\n".join(_cells(path, "code"))
    used = {
        role.split(":")[0].strip()
        for md in _cells(path, "markdown")
        for role in GLUE_ROLE.findall(md)
    }
    missing = sorted(
        key
        for key in used
        if not re.search(r"""glue\(\s*["']""" + re.escape(key) + r"""["']""", code)
    )
    assert not missing, (
        f"{path.name}: glue roles without a glue(...) call in a code cell: {missing}"
    )
