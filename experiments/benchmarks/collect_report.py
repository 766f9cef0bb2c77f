"""Collect every benchmark report (``experiments/benchmarks/*.md``) into one ``report.md``.

    python experiments/benchmarks/collect_report.py [--out experiments/benchmarks/report.md]

The crafting benchmarks come first, in the order of the performance issue (projection, crafting, options,
identity batching, memory), then every other report that exists (evaluation gallery, cloaking, zoo,
prepare, ...). Each report keeps its own machine, load and command lines; their headings move one level
down. A summary table at the top repeats the headline numbers found in them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["projection.md", "crafting_throughput.md", "update_floor.md", "crafting_options.md",
         "identity_batching.md", "crafting_memory.md", "eval_gallery.md", "cloak_throughput.md"]


def _demote(text: str) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def _headline(name: str, text: str) -> str | None:
    """The report's own bold summary line (``**...**``) when it has one, else its first table row with the
    column names."""
    bold = re.search(r"^\*\*(.+?)\*\*\s*$", text, flags=re.M)
    if bold:
        return bold.group(1)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    if len(rows) < 2:
        return None
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows[:2]]
    return "first row: " + "; ".join(f"{h} {v}" for h, v in zip(*cells, strict=False))


def collect(folder: Path, out: Path) -> str:
    reports = [folder / n for n in ORDER if (folder / n).is_file()]
    reports += sorted(p for p in folder.glob("*.md") if p not in reports and p.name != out.name)
    summary, body = [], []
    for path in reports:
        text = path.read_text().strip()
        head = _headline(path.name, text)
        if head:
            summary.append(f"| [{path.name}](#{path.stem}) | {head.replace('|', '/').strip(' /')} |")
        body.append(f'<a id="{path.stem}"></a>\n\n' + _demote(text))
    return ("# Benchmark report\n\n"
            "Collected from the individual reports in `experiments/benchmarks/` by "
            "`python experiments/benchmarks/collect_report.py` (`make bench` runs every benchmark, then this). "
            "Each section below keeps its own machine description, load and exact command.\n\n"
            "| report | headline |\n|---|---|\n" + "\n".join(summary) + "\n\n" + "\n\n".join(body) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=HERE)
    ap.add_argument("--out", type=Path, default=HERE / "report.md")
    args = ap.parse_args(argv)
    text = collect(args.folder, args.out)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
