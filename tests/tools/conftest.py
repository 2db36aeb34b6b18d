"""Makes the helpers next to the tool tests (toolfakes.py, mcp_server.py) importable, whether or not this
directory is a package."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
