"""Print the README's command marked ``<!-- command: NAME -->`` (the next fenced block)."""

import re
import sys
from pathlib import Path

name = sys.argv[1]
text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
match = re.search(
    rf"<!-- command: {re.escape(name)} -->\s*```(?:sh|bash|shell)?\n(.*?)```", text, re.S
)
if not match:
    sys.exit(f"README.md has no '<!-- command: {name} -->' block")
print(" && ".join(line.strip() for line in match.group(1).strip().splitlines() if line.strip()))
