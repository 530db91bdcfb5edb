import sys
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# CI must not flicker: every property test draws the same examples on every run
settings.register_profile("derandomized", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("derandomized")
