"""Stage the book's sources for a render with execution off (used by `make book` and the build test).

    python scripts/stage_book.py --list-notebooks
        the chapter notebooks of _toc.yml, longest first (by the cell timings stored in each
        notebook), one path a line: scripts/build_book.sh executes them in this order, so that with
        N parallel workers the long chapters start first.
    python scripts/stage_book.py --out _build/book-src [--executed _build/executed/notebooks]
        writes a copy of the book into OUT: _config.yml with `execute_notebooks: 'off'`, _toc.yml,
        book/ (pages, references.bib, _static with the vendored MathJax), and every document of
        _toc.yml; each notebook is taken from EXECUTED when given (the fresh run of `make book`),
        otherwise the stored one from notebooks/; its progress-bar outputs are then collapsed
        (scripts/collapse_progress.py). The tracked files are only read.
Then `jupyter-book build OUT` renders it (scripts/build_book.sh).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import nbformat
import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from collapse_progress import collapse_notebook  # noqa: E402

# Copied whole (relative to the repository root): the pages outside _toc.yml's own files that a
# build needs (bibliography, static files, MathJax).
BOOK_DIRS = ["book"]


def toc_documents(root: Path = REPO_ROOT) -> list[str]:
    """Every document of _toc.yml, root first, as paths without extension."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    docs = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                docs.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", [{"chapters": toc.get("chapters")}]):
        walk(part.get("chapters"))
    return docs


def source_of(doc: str, root: Path = REPO_ROOT) -> Path:
    for suffix in (".md", ".ipynb"):
        if (root / f"{doc}{suffix}").exists():
            return root / f"{doc}{suffix}"
    raise SystemExit(f"_toc.yml lists {doc!r} but neither {doc}.md nor {doc}.ipynb exists")


def stored_run_seconds(path: Path) -> float:
    """Seconds between the first and the last cell execution timestamps stored in the notebook
    (nbclient records them); 0 when it stores none."""
    stamps = []
    for cell in json.loads(path.read_text()).get("cells", []):
        execution = cell.get("metadata", {}).get("execution", {})
        for key in ("iopub.execute_input", "shell.execute_reply"):
            if key in execution:
                stamps.append(dt.datetime.fromisoformat(execution[key].replace("Z", "+00:00")))
    return (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0


def chapter_notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """The notebooks of _toc.yml, longest stored run first (ties: _toc.yml order)."""
    notebooks = [p for p in map(lambda d: source_of(d, root), toc_documents(root)) if p.suffix == ".ipynb"]
    return sorted(notebooks, key=stored_run_seconds, reverse=True)


def stage(out: Path, executed: Path | None = None, root: Path = REPO_ROOT) -> Path:
    """Write the staged book into `out` (replaced); returns `out`."""
    out = out.resolve()
    if out == root.resolve() or root.resolve().is_relative_to(out):
        raise SystemExit(f"refusing to stage into {out}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (out / "_config.yml").write_text(
        "# Staged by scripts/stage_book.py from _config.yml: execution off (notebooks already run).\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )
    shutil.copy2(root / "_toc.yml", out / "_toc.yml")
    for folder in BOOK_DIRS:
        if (root / folder).is_dir():
            shutil.copytree(root / folder, out / folder, dirs_exist_ok=True)

    for doc in toc_documents(root):
        src = source_of(doc, root)
        dest = out / src.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix != ".ipynb":
            shutil.copy2(src, dest)
            continue
        if executed is not None:
            src = executed / src.name
            if not src.exists():
                raise SystemExit(f"no executed notebook {src} (did its execution fail?)")
        nb = nbformat.read(src, 4)
        collapse_notebook(nb)
        nbformat.write(nb, dest)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-notebooks", action="store_true", help="print the chapter notebooks, longest first")
    parser.add_argument("--out", type=Path, help="staging folder (replaced)")
    parser.add_argument("--executed", type=Path, help="folder with the executed notebooks (default: the stored ones)")
    args = parser.parse_args()
    if args.list_notebooks:
        for path in chapter_notebooks():
            print(path.relative_to(REPO_ROOT))
        return
    if args.out is None:
        parser.error("--out is required (or --list-notebooks)")
    print(f"staged the book in {stage(args.out, args.executed)}")


if __name__ == "__main__":
    main()
