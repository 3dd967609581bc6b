"""Write docs/architecture.md from the package's import graph: python scripts/architecture.py [--check]

--check writes nothing and exits 1 when the file differs from what the code gives now."""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tools/ is repository tooling, not installed: import it from here

from tools.import_graph import architecture_markdown  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    doc, text = ROOT / "docs" / "architecture.md", architecture_markdown(ROOT / "freezetune")
    if args.check:
        if not doc.is_file() or doc.read_text() != text:
            print(f"{doc} is out of date: run python scripts/architecture.py")
            return 1
        return 0
    doc.write_text(text)
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
