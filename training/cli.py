"""How the command-line tools end: a readable ``error: ...`` line and exit status 2 for expected failures
(missing files, bad data, S3 refusals), never a traceback; anything unexpected still raises."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USAGE = 2


def run(
    main: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    expected: tuple[type[BaseException], ...],
    describe: Callable[[BaseException], str] = str,
) -> int:
    args = parser.parse_args(argv)
    try:
        return main(args)
    except expected as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return EXIT_USAGE
