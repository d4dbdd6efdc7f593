"""docker/site builds the book in strict mode and serves it as static files (Docker itself does not run on
the book's CI machines, so the image's recipe is checked here and built by whoever has Docker)."""

from servelab.book.tree import ROOT

DOCKERFILE = ROOT / "docker" / "site" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_two_stages_build_then_serve_static_files():
    steps = instructions()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) == 2 and ":" in froms[0] and ":" in froms[1]  # pinned tags
    assert any(op == "RUN" and "mkdocs build --strict" in arg for op, arg in steps)
    assert any(op == "COPY" and arg.startswith("--from=build /site") for op, arg in steps)
    assert ("EXPOSE", "8080") in steps
    assert any(op == "HEALTHCHECK" for op, _ in steps)


def test_everything_the_build_copies_exists():
    for op, arg in instructions():
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
