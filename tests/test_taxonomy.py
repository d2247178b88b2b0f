"""The method table is the one source of method names, categories and docs/taxonomy.md."""

from __future__ import annotations

import importlib
from pathlib import Path

from bab import taxonomy
from bab.bounding import BOUNDERS, get_bounder
from bab.methods import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "taxonomy.md"


def test_doc_is_generated_from_the_table() -> None:
    assert DOC.read_text(encoding="utf-8") == taxonomy.render_markdown(), \
        "docs/taxonomy.md is stale: run python -m bab.taxonomy > docs/taxonomy.md"


def test_registries_come_from_the_table() -> None:
    assert set(METHODS) == set(taxonomy.BY_NAME)
    assert set(BOUNDERS) == {m.name for m in taxonomy.METHODS if m.bounder is not None}


def test_every_entry_imports_and_names_itself() -> None:
    for m in taxonomy.METHODS:
        module, factory = m.entry.split(":")
        assert callable(getattr(importlib.import_module(module), factory)), m.name
    for name in BOUNDERS:
        assert get_bounder(name).name == name


def test_rows_are_grouped_by_category_in_report_order() -> None:
    rows = taxonomy.ordered()
    ranks = [list(taxonomy.Category).index(m.category) for m in rows]
    assert ranks == sorted(ranks)
    assert rows[0].category.complete and not rows[-1].category.complete
    assert [m.name for m in taxonomy.ordered(["ibp", "milp"])] == ["milp", "ibp"]
