from __future__ import annotations

import sys
from pathlib import Path

# tests/ holds shared helpers (serving.py) that test modules in sub-folders import.
sys.path.insert(0, str(Path(__file__).parent))
