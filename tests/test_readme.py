"""The README and docs/ must say what the code does: commands, links and the configuration table."""

import re
import subprocess
import sys

import pytest

from lambda_fn.contract import settings_table
from lambda_fn.contract.config import ENV_PREFIX, Settings, env_name
from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
CONFIGURATION = REPO_ROOT / "docs" / "configuration.md"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_the_configuration_table_is_the_one_make_docs_generates():
    text = CONFIGURATION.read_text()
    assert settings_table.render(text) == text, "docs/configuration.md's settings table is stale: run `make docs`"


def test_configuration_page_lists_every_setting_with_its_default():
    text = CONFIGURATION.read_text()
    row = rf"^\| `({re.escape(ENV_PREFIX)}[A-Z0-9_]+)` \| ([^|]+)\|"
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(row, text, re.M)}
    assert set(rows) == {env_name(name) for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        cell = rows[env_name(name)]
        if field.is_required():
            assert cell == "**required**"
        elif field.default not in (None, []) and field.default_factory is None:
            assert cell == f"`{field.default}`", name


def test_the_check_mode_fails_on_a_stale_table(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    page.write_text(f"{settings_table.BEGIN}\n| old |\n{settings_table.END}\n")
    assert settings_table.main([str(page), "--check"]) == 1
    assert "make docs" in capsys.readouterr().err
    assert settings_table.main([str(page)]) == 0
    assert settings_table.main([str(page), "--check"]) == 0
    assert f"`{env_name('artifacts_uri')}` | **required** |" in page.read_text()


def test_both_set_up_commands_are_documented_and_exist():
    text = README.read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "make demo   # synthetic sample set -> train -> export -> index -> evaluate -> http://127.0.0.1:8000" in text
    assert "# the int8/engine tests again with the kernels capped at AVX2 (all Lambda promises)" in text
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, re.M)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_make_target_named_exists(page):
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)", page.read_text())) | set(
        re.findall(r"^make ([a-z][\w-]*)", page.read_text(), re.M)
    )
    assert named - targets == set()


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_python_module_named_is_in_the_repository(page):
    roots = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}
    missing = []
    for module in set(re.findall(r"python3? -m ([\w.]+)", page.read_text())):
        if module.split(".")[0] in roots:
            path = REPO_ROOT.joinpath(*module.split("."))
            if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
                missing.append(module)
    assert missing == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        unknown_anchor = anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)
        if not resolved.exists() or unknown_anchor:
            broken.append(target)
    assert broken == []


def test_the_readme_is_short_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for page in PAGES:
        assert f"](docs/{page.name})" in text, page.name


def test_the_generator_runs_without_torch_boto3_or_pil():
    code = "import sys, lambda_fn.contract.settings_table; print(sorted({'torch', 'boto3', 'PIL'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
