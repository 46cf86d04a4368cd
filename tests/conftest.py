from __future__ import annotations

# tests/ is a package (tests/__init__.py): pytest puts the repository root on sys.path, and shared
# helpers are imported by their full name (tests.serving, tests.models, tests.monitoring.scrape), so no
# helper module shadows a top-level name such as the monitoring/ folder.
