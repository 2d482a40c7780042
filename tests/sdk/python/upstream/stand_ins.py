"""kiln's stand-ins for what Dagger's own SDK tests take from the internet.

Installed as conftest.py next to dagger-io's tests/client/test_integration.py (v0.21.8) by
run.sh. Their `alpine_image` is an Alpine image for linux/amd64 and
linux/arm64; here it is kiln's two-platform busybox fixture (what the tests
run in it, busybox has: sh, printenv, uname, cat); github.com/dagger/dagger
is a stand-in repository that run.sh serves. The tests that need what this
machine cannot give are skipped, each with its reason."""

import pytest

CANNOT_RUN_HERE = {
    "test_container": "reads /etc/alpine-release of Alpine 3.20.2 (no Docker Hub here; the stand-in is busybox)",
    "test_container_build": "builds Dagger v0.3.0's own Dockerfile (Go toolchain images of Docker Hub)",
    "test_service_start_stop": "builds runtime/images/base of a Dagger checkout, FROM a Python image of Docker Hub",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if reason := CANNOT_RUN_HERE.get(item.originalname):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def alpine_image():
    return "busybox:multiplatform"
