"""Atomic outputs: complete or absent, never half-written, with the usual file modes."""

import os
import stat

import pytest

from wml_framework.runtime.atomic import (
    append_jsonl,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    replace_doc_section,
)


def test_atomic_file_has_umask_mode_and_replaces(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_directory_write_leaves_the_old_one(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError("interrupted")
    assert (target / "w").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_jsonl_appends_and_json_round_trips(tmp_path):
    append_jsonl(tmp_path / "m.jsonl", {"a": 1})
    append_jsonl(tmp_path / "m.jsonl", {"a": 2})
    assert (tmp_path / "m.jsonl").read_text().splitlines() == ['{"a": 1}', '{"a": 2}']
    atomic_write_json(tmp_path / "s.json", {"x": [1, 2]})
    assert '"x"' in (tmp_path / "s.json").read_text()


def test_doc_sections_are_replaced_alone(tmp_path):
    doc = tmp_path / "p.md"
    replace_doc_section(doc, "a", "first")
    replace_doc_section(doc, "b", "second")
    replace_doc_section(doc, "a", "third")
    text = doc.read_text()
    assert "third" in text and "second" in text and "first" not in text
