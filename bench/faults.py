"""Every fault probe of issue 14 (tests/test_faults.py `PROBES`), one verdict line per probe.

Runs the tests marked `@pytest.mark.probe` (library calls on small generated data; a few through
`dvc repro` or a stage process: a few minutes on 2 cores); tests/conftest.py prints the verdicts at the
end. The whole test suite (CI) runs the same tests. Usage: `python bench/faults.py [extra pytest args]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(pytest.main(["-m", "probe", "-q", "-p", "no:cacheprovider", str(ROOT / "tests"), *sys.argv[1:]]))
