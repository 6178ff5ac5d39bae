"""The import direction hpo -> workers -> storage, and a numerical core free of Optuna and SQL."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# Optuna's private API is used only in storage/ (storage/optuna_access.py says where and why).
PRIVATE_OPTUNA = re.compile(
    r"optuna(\.\w+)*\._\w+"  # a private module or name reached through optuna.*
    r"|\._(pop_waiting_trial_id|thread_local|suggest|get_stale_trial_ids|study_id|trial_id|backend"
    r"|storage|get_trials|sample)\b"
)


def test_no_private_optuna_name_outside_storage():
    found = []
    for folder in ("hpo", "workers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for match in PRIVATE_OPTUNA.finditer(code):
                    if not code[: match.start()].rstrip().endswith("self"):  # our own attributes
                        found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "private Optuna names outside storage/:\n" + "\n".join(found)
