"""The architecture's import boundaries (docs/architecture.md, "Import layers"), checked two
ways."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_daemon_side_never_imports_textual() -> None:
    code = (
        "import json, sys\n"
        "import edgeinfer.cli, edgeinfer.bootstrap, edgeinfer.server.app, edgeinfer.server.daemon\n"
        "import edgeinfer.client, edgeinfer.engine.llama\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'"
        " or m.startswith('edgeinfer.tui'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a test dependency (pip install -e '.[test]')"
    out = subprocess.run([exe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
