"""tools/mutate.py's own rules: a stale or ambiguous catalogue entry is an error, never a skip;
the score and the survivors' notes in the report. (The mutation run itself is `make mutate`.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutate", ROOT / "tools" / "mutate.py")
assert _spec and _spec.loader
mutate = importlib.util.module_from_spec(_spec)
sys.modules["mutate"] = mutate
_spec.loader.exec_module(mutate)


def entry(**changes: str) -> dict[str, str]:
    base = {"id": "m", "area": "settings", "file": "f.py", "find": "x = 1", "replace": "x = 2", "breaks": "x"}
    return {**base, **changes}


def write(tmp_path: Path, *entries: dict[str, str]) -> Path:
    import yaml

    path = tmp_path / "mutations.yaml"
    path.write_text(yaml.safe_dump(list(entries)))
    return path


def test_missing_or_ambiguous_text_is_reported(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text("x = 1\ny = 3\ny = 3\n")
    mutations = mutate.load(write(
        tmp_path, entry(), entry(id="gone", find="z = 9"), entry(id="twice", find="y = 3"), entry(id="nofile", file="g.py"),
    ))
    problems = mutate.check(mutations, tmp_path)
    assert len(problems) == 3
    assert problems[0].startswith("gone: original text not found in f.py")
    assert problems[1].startswith("twice: original text found 2 times (must be unique) in f.py")
    assert problems[2] == "nofile: g.py does not exist"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((entry(), entry()), "duplicate ids: m"),
        ((entry(area="vibes"),), "m: area 'vibes'; allowed:"),
        ((entry(replace="x = 1"),), "m: the replacement equals the original text"),
    ],
)
def test_bad_catalogue_entries_are_refused(tmp_path: Path, entries: tuple[dict[str, str], ...], message: str) -> None:
    with pytest.raises(mutate.CatalogueError, match=message.replace("(", r"\(")):
        mutate.load(write(tmp_path, *entries))


def test_report_counts_and_lists_survivors_with_their_notes() -> None:
    noted = mutate.Mutation(**entry(id="eq", survivor="Equivalent: nothing reads it."))
    bare = mutate.Mutation(**entry(id="bare"))
    killed = [mutate.Outcome(mutate.Mutation(**entry(id=f"k{i}")), True, "tests/t.py::t", 1.0) for i in range(8)]
    text = mutate.report([*killed, mutate.Outcome(noted, False, "", 2.0), mutate.Outcome(bare, False, "", 2.0)], "abc1234", 60)
    assert "**8 of 10 killed (80%); target 90%.**" in text
    assert "- `eq` (f.py): x. Equivalent: nothing reads it." in text
    assert "- `bare` (f.py): x. NO NOTE:" in text
    assert text.count("| killed |") == 8 and text.count("| **SURVIVED** |") == 2


def test_the_catalogue_matches_the_code_on_main() -> None:
    """Every catalogued text is found exactly once, so `make mutate` can run on any landed commit:
    a change that edits a mutated line updates its catalogue entry in the same commit."""
    assert mutate.check(mutate.load()) == []
