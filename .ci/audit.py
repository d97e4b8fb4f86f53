"""Known vulnerabilities in the Lambda image's locked requirements and torch, with pip-audit.

    python .ci/audit.py            (make audit)

Exit 0: everything was checked and nothing is known to be vulnerable; 1: vulnerabilities found (listed);
2: some or all packages could NOT be checked (the vulnerability service was unreachable, or it does not
know them), said plainly, so a silent "no known vulnerabilities" never hides an audit that did not run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "lambda_fn" / "requirements.txt"


def torch_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.replace(" ", "").startswith("torch=="))


def audit(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        print(f"pip-audit did not run: {(proc.stderr or proc.stdout).strip()[-800:]}", file=sys.stderr)
        sys.exit(2)


def main() -> int:
    pin = Path(ROOT / ".ci" / ".torch-requirement.txt")
    pin.write_text(torch_pin() + "\n")
    try:
        results = [
            audit(["--requirement", str(LOCK), "--require-hashes", "--disable-pip"]),
            audit(["--requirement", str(pin), "--no-deps", "--disable-pip"]),
        ]
    finally:
        pin.unlink(missing_ok=True)
    checked, unchecked, vulnerable = [], [], []
    for result in results:
        for dep in result.get("dependencies", []):
            name = dep["name"] + (f"=={dep['version']}" if dep.get("version") else "")
            if dep.get("skip_reason"):
                unchecked.append(f"{name}: {dep['skip_reason']}")
            else:
                checked.append(name)
                vulnerable += [
                    f"{name}: {v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})"
                    for v in dep.get("vulns", [])
                ]
    print(f"pip-audit checked {len(checked)} of {len(checked) + len(unchecked)} packages")
    for line in vulnerable:
        print(f"VULNERABLE {line}")
    if unchecked:
        print(f"NOT CHECKED ({len(unchecked)}): the vulnerability service could not be asked about these:")
        for line in unchecked[:20]:
            print(f"  {line}")
        if not checked:
            print("pip-audit could not check anything: this audit says nothing about known vulnerabilities.")
    if vulnerable:
        return 1
    return 2 if unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
