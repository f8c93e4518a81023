"""Test-session paths: the client distribution (`clients/python`, installed by `make install`) is importable from
this checkout even where it was not installed, in the tests and in the processes they start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CLIENT_SOURCE = str(Path(__file__).resolve().parent / "clients" / "python")

if CLIENT_SOURCE not in sys.path:
    sys.path.append(CLIENT_SOURCE)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), CLIENT_SOURCE]))
