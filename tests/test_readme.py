"""The README's configuration table must say what lambda_fn/contract/config.py does."""

import re

from lambda_fn.contract.config import ENV_PREFIX, Settings, env_name
from tests.helpers import REPO_ROOT


def test_configuration_table_lists_every_setting_with_its_default():
    text = (REPO_ROOT / "README.md").read_text()
    row = rf"^\| `({re.escape(ENV_PREFIX)}[A-Z0-9_]+)` \| ([^|]+)\|"
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(row, text, re.M)}
    assert set(rows) == {env_name(name) for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        cell = rows[env_name(name)]
        if field.is_required():
            assert cell == "**required**"
        elif field.default not in (None, []) and field.default_factory is None:
            assert cell == f"`{field.default}`", name


def test_both_set_up_commands_are_documented_and_exist():
    text = (REPO_ROOT / "README.md").read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, re.M)
