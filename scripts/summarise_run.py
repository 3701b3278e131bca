"""Recompute a comparison run's summary (summary.csv, summary.md, figure.png) from its per_record.jsonl.

    python scripts/summarise_run.py book/results/compare-all-facts --cluster relation --correction holm

The per-record rows are the run's results and stay as they are; the summary is arithmetic on them, so it can be
recomputed when the book changes how it draws intervals (here: resampling whole relations, and Holm's correction
over the table, issue 29). The choice is recorded in settings.json under "summary", which the tests of
book/at-scale.md read to recompute the table the same way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from editlens.compare import read_per_record, summary_figure, summary_markdown, summary_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder written by `python -m editlens compare --out`")
    parser.add_argument("--cluster", default=None, help="column of per_record.jsonl to resample by (e.g. relation)")
    parser.add_argument("--correction", default=None, choices=["holm"], help="multiple-comparison correction")
    args = parser.parse_args()
    per = read_per_record(args.folder / "per_record.jsonl")
    table = summary_table(per, cluster=args.cluster, correction=args.correction)
    table.to_csv(args.folder / "summary.csv", index=False)
    (args.folder / "summary.md").write_text(summary_markdown(table), encoding="utf-8")
    summary_figure(table, args.folder / "figure.png")
    settings_path = args.folder / "settings.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    settings["summary"] = {"cluster": args.cluster, "correction": args.correction}
    settings_path.write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.folder}/summary.csv, summary.md, figure.png; settings.json['summary'] = {settings['summary']}")


if __name__ == "__main__":
    main()
