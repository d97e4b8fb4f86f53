"""bench/startup.py turns each trick off by name: a renamed trick would leave its "without" run with it on."""

import re

from bench.startup import CHILD
from lambda_fn.search import startup


def test_every_trick_the_child_turns_off_is_a_startup_function():
    replaced = set(re.findall(r"startup\.(\w+) =", CHILD))
    assert replaced == {"pause_gc", "settle_gc"}
    for name in replaced:
        assert callable(getattr(startup, name, None)), f"bench.startup turns off startup.{name}, which is gone"
