"""The chapter tree mirrors the seed's lab tree exactly."""

import re

from servelab.book.tree import ROOT, TRACKS, lessons


def seed_tree() -> dict[str, list[str]]:
    text = (ROOT / "code" / "servelab" / "book" / "seed.md").read_text(encoding="utf-8")
    tree, lab = {}, None
    for line in text.splitlines():
        if m := re.search(r"(Lab-\d\.\d-[\w]+)/", line):
            lab = m[1]
            tree[lab] = []
        elif lab and (m := re.search(r"(\d\d-[\w]+)\.ipynb", line)):
            tree[lab].append(m[1])
    return tree


def test_two_tracks_nine_labs_36_lessons():
    assert [t.slug for t in TRACKS] == ["vllm", "triton"]
    assert sum(len(t.labs) for t in TRACKS) == 9
    assert len(lessons()) == 36


def test_names_are_the_seeds():
    seed = seed_tree()
    ours = {lab.seed_name: [item.seed_name for item in lab.lessons] for t in TRACKS for lab in t.labs}
    assert len(seed) == 9
    assert ours == seed


def test_paths_mirror_each_other():
    for item in lessons():
        rel = f"{item.track}/{item.lab}/{item.slug}"
        assert item.page == ROOT / "docs" / f"{rel}.md"
        assert item.module == ROOT / "code" / "servelab" / f"{rel}.py"
        assert item.test == ROOT / "tests" / item.track / item.lab / f"test_{item.slug}.py"
        assert item.notebook == ROOT / "docs" / "notebooks" / f"{rel}.ipynb"
        assert item.slug.isidentifier()
