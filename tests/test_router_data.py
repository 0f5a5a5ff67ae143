"""The router's labelled splits: a wrong label or a leak between splits would make every figure
measured on them meaningless, so each item's regex is checked against the answers its author
said it must take and refuse, and no prompt sits in two splits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "router"
SPLITS = ("train", "dev", "test")
TYPES = {"question_answer", "code", "classification", "extraction", "generation", "summarization"}


def rows(split: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("split", SPLITS)
def test_every_item_is_well_formed_and_its_regex_does_what_its_author_said(split: str) -> None:
    items = rows(split)
    assert items
    for item in items:
        assert {"id", "prompt", "answer", "type", "difficulty"} <= item.keys(), item
        assert item["type"] in TYPES and item["difficulty"] in {"easy", "medium", "hard"}, item
        pattern = re.compile(str(item["answer"]), re.IGNORECASE)
        for good in item.get("accept", []):  # type: ignore[attr-defined]
            assert pattern.search(good), (item["id"], good)
        for bad in item.get("reject", []):  # type: ignore[attr-defined]
            assert not pattern.search(bad), (item["id"], bad)


def test_splits_share_no_id_and_no_prompt() -> None:
    seen: dict[str, str] = {}
    prompts: dict[str, str] = {}
    for split in SPLITS:
        for item in rows(split):
            ident, prompt = str(item["id"]), " ".join(str(item["prompt"]).lower().split())
            assert ident not in seen, f"{ident} in {seen.get(ident)} and {split}"
            assert prompt not in prompts, f"{ident} repeats {prompts.get(prompt)}"
            seen[ident], prompts[prompt] = split, ident
    assert len(seen) >= 1500  # issue 16: at least 1,500 labelled prompts


def test_the_test_split_holds_only_prompts_nothing_was_tuned_on() -> None:
    # t001.., e001..: the earlier sets the bundled classifier and defaults were chosen on
    assert not [i["id"] for i in rows("test") if re.fullmatch(r"[te]\d+", str(i["id"]))]
