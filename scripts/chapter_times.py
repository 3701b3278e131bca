"""The chapters' running times, read from their stored runs (book/chapter-times.md).

    python scripts/chapter_times.py           # print the table
    python scripts/chapter_times.py --write   # write book/chapter-times.md (included by book/teaching.md)
    python scripts/chapter_times.py --record-float32 _build/executed/notebooks   # after `make book` on a CPU
                                              # without bf16 units: write book/results/chapter-times-float32.json

Each stored chapter records when every code cell started and finished (nbclient's ``metadata.execution``
timestamps, written by scripts/build_notebook.sh). From them: the chapter's whole time, and the time up to
and including its first and its last exercise check (a cell calling ``check_exercise``), which is what
grading a submission costs. tests/test_notebook_tools.py regenerates the table and fails if the page is
stale, so no timing in the book is typed by hand.

The stored runs compute in bfloat16 (a CPU with AMX). A laptop without bf16 units computes in float32, several
times slower, so the page also gives a float32 run of every chapter: the executed copies of a `make book` on such a
CPU (each chapter on one thread), kept as a record (:data:`FLOAT32_RECORD`) with the machine, the commit, each
chapter's printed precision and a fingerprint of its code. A chapter whose code changed after that run is marked †.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "chapter-times.md"
FLOAT32_RECORD = ROOT / "book" / "results" / "chapter-times-float32.json"
sys.path.insert(0, str(ROOT / "scripts"))
import stage_book  # noqa: E402  (the chapters of _toc.yml, as make book reads them)


def chapters() -> list[Path]:
    """The chapter notebooks, in _toc.yml's order."""
    return [p for p in map(stage_book.source_of, stage_book.toc_documents()) if p.suffix == ".ipynb"]


def title(path: Path) -> str:
    """The chapter's short title: its first heading up to the colon ("5. SADR")."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", "".join(cell["source"]), re.M)
            if m:
                return m.group(1).split(":")[0].strip()
    return path.stem


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def cell_seconds(cell: dict) -> float:
    """Seconds one executed code cell took (0 for a cell without timestamps)."""
    ex = cell.get("metadata", {}).get("execution", {})
    start, end = ex.get("iopub.execute_input") or ex.get("iopub.status.busy"), ex.get("shell.execute_reply")
    return (_stamp(end) - _stamp(start)).total_seconds() if start and end else 0.0


def chapter_times(path: Path) -> dict[str, float | int]:
    """Total seconds, seconds up to the first and the last exercise check, and the number of checks."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    missing = [i for i, c in enumerate(code) if not c.get("metadata", {}).get("execution")]
    if missing:
        raise ValueError(f"{path.name}: code cells {missing[:5]} carry no execution timestamps. Fix: rebuild the "
                         f"chapter with scripts/build_notebook.sh {path.stem}.")
    elapsed, first, last, n = 0.0, None, None, 0
    for c in code:
        elapsed += cell_seconds(c)
        if re.search(r"\bcheck_exercise\(", "".join(c["source"])):
            n += 1
            first = elapsed if first is None else first
            last = elapsed
    return {"total": elapsed, "first": first or 0.0, "last": last or 0.0, "exercises": n}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def code_fingerprint(path: Path) -> str:
    """A short hash of the chapter's code cells: tells whether a recorded run ran the code stored now."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n# ---\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return hashlib.sha256(code.encode("utf-8")).hexdigest()[:16]


def printed_precision(path: Path) -> str:
    """The precision line a chapter prints (``editlens.precision.of(model).describe()``), unwrapped."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            text = " ".join("".join(out.get("text", "")).split())
            m = re.search(r"(float32 throughout|bfloat16 matrix products, float32 weights) \(auto: [^)]*\)", text)
            if m:
                return m.group(0)
    raise ValueError(f"{path.name} prints no precision line (editlens.precision.of(model).describe()).")


def _machine() -> str:
    """The CPU's model name, core count and widest matrix instructions, from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value:
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                   ("amx_bf16", "AMX")) if flag in flags]
    parts = [model, f"{os.cpu_count()} cores"]
    if isa:
        parts.append("AVX2 only" if isa == ["AVX2"] else " and ".join(isa))
    return ", ".join(parts)


def record_float32(executed: Path) -> dict:
    """The float32 record of the executed copies in ``executed`` (``_build/executed/notebooks`` after `make book`).

    Refuses copies that did not compute in float32, that lack a chapter of _toc.yml, or whose exercise checks differ
    in number from the stored run's."""
    chapters_out = {}
    for stored in chapters():
        copy = executed / stored.name
        if not copy.exists():
            raise SystemExit(f"{copy} is missing. Fix: run `make book` (it executes every chapter) on a CPU without "
                             "bf16 units, then pass its _build/executed/notebooks.")
        precision = printed_precision(copy)
        if not precision.startswith("float32"):
            raise SystemExit(f"{copy.name} computed in {precision}: not a float32 run. Fix: record the copies of a "
                             "`make book` on a CPU without AMX or AVX512-BF16.")
        t, s = chapter_times(copy), chapter_times(stored)
        if t["exercises"] != s["exercises"]:
            raise SystemExit(f"{copy.name} has {t['exercises']} exercise checks, the stored run {s['exercises']}: "
                             "another version of the chapter. Fix: execute the chapters stored now.")
        chapters_out[stored.stem] = dict(total=round(float(t["total"]), 1), first=round(float(t["first"]), 1),
                                         last=round(float(t["last"]), 1), exercises=int(t["exercises"]),
                                         precision=precision, code=code_fingerprint(copy))
    commit = subprocess.run(["git", "-C", str(executed), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return dict(machine=_machine(), commit=commit, threads=1,
                how=f"`make book`, every chapter on one thread, {os.cpu_count()} at a time",
                chapters=chapters_out)


def table() -> str:
    record = json.loads(FLOAT32_RECORD.read_text(encoding="utf-8"))
    f32 = record["chapters"]
    lines = ["| chapter | time to run | in float32 | to the first exercise check | in float32 | "
             "to the last exercise check | in float32 |", "|---|---:|---:|---:|---:|---:|---:|"]
    total = total32 = 0.0
    changed = []
    for path in chapters():
        t = chapter_times(path)
        total += float(t["total"])
        cells = [_minutes(float(t["total"])), _minutes(float(t["first"])),
                 f"{_minutes(float(t['last']))} ({t['exercises']} checks)"]
        r = f32.get(path.stem)
        if r is None:  # a chapter added after the float32 run: its float32 cells stay empty until it is recorded
            cells = [cells[0], "", cells[1], "", cells[2], ""]
        else:
            mark = ""
            if r["code"] != code_fingerprint(path):
                mark = " †"
                changed.append(path.stem)
            total32 += float(r["total"])
            cells = [cells[0], _minutes(float(r["total"])) + mark, cells[1], _minutes(float(r["first"])),
                     cells[2], _minutes(float(r["last"]))]
        lines.append(f"| {title(path)} | " + " | ".join(cells) + " |")
    lines.append(f"| all chapters | {_minutes(total)} | {_minutes(total32)} | | | | |")
    out = ("\n".join(lines) + "\n"
           f"\nThe columns *in float32* come from {record['how']}, on a CPU without bf16 units "
           f"({record['machine']}) at commit `{record['commit']}`: {total32 / total:.1f} times the stored runs' "
           f"time in all. The other columns are the stored runs (one thread, bfloat16 matrix products on a CPU "
           f"with AMX). The float32 run's record: `book/results/{FLOAT32_RECORD.name}`.\n")
    if changed:
        out += f"\n† The chapter's code changed after that float32 run ({', '.join(changed)}): record it again.\n"
    return out


def page() -> str:
    return ("<!-- Generated by scripts/chapter_times.py from the stored runs; do not edit by hand. -->\n\n"
            + table())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(ROOT)}")
    ap.add_argument("--record-float32", metavar="DIR", type=Path,
                    help=f"write {FLOAT32_RECORD.relative_to(ROOT)} from the executed copies in DIR (then --write)")
    args = ap.parse_args()
    if args.record_float32:
        record = record_float32(args.record_float32)
        FLOAT32_RECORD.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {FLOAT32_RECORD.relative_to(ROOT)} ({record['machine']}, commit {record['commit']})")
    if args.write:
        PAGE.write_text(page(), encoding="utf-8")
        print(f"wrote {PAGE.relative_to(ROOT)}")
    else:
        print(table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
