"""A minimal test runner (python3-minimal has no unittest): imports every
tests/test_*.py, runs each test_* function, prints one line per test and
exits non-zero if any failed."""

import importlib
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "tests")]


def main():
    failed = passed = 0
    for name in sorted(os.listdir(os.path.join(HERE, "tests"))):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        module = importlib.import_module(name[:-3])
        for attr in sorted(dir(module)):
            fn = getattr(module, attr)
            if not (attr.startswith("test_") and callable(fn)):
                continue
            try:
                fn()
            except Exception:
                failed += 1
                print(f"FAIL {name}::{attr}")
                traceback.print_exc()
            else:
                passed += 1
                print(f"ok   {name}::{attr}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
