"""Every CDRFLOW_* variable that deploy/ names is one the code reads.

The code's variables are the fields of cdrflow.settings.Settings, each read as
CDRFLOW_<FIELD IN UPPER CASE>. Usage (in the project's venv, from the repository root):
python deploy/check/settings_used.py deploy"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cdrflow.settings import Settings

MENTION = re.compile(r"\bCDRFLOW_[A-Z0-9_]*[A-Z0-9]\b")
SKIPPED_PARTS = {".tools", "__pycache__"}


def known_variables() -> set[str]:
    return {Settings.variable(name) for name in Settings.model_fields}


def mentions(root: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or SKIPPED_PARTS & set(path.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name in MENTION.findall(text):
            found.setdefault(name, set()).add(str(path))
    return found


def main(root: str) -> int:
    known = known_variables()
    found = mentions(Path(root))
    unknown = {name: paths for name, paths in found.items() if name not in known}
    for name, paths in sorted(unknown.items()):
        print(f"{name}: not a setting the code reads (in {', '.join(sorted(paths))})")
    if not unknown:
        print(f"{len(found)} CDRFLOW_* variables named in {root}/, all read by the code")
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy"))
