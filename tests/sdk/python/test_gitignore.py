"""Host.directory(gitignore: true): what the tree's .gitignore files (nested,
with negations) and those above it in its git repository ignore is left
out, .git included; without the flag everything is uploaded."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.anyio


def repo(root: Path) -> Path:
    files = {
        ".git/HEAD": "ref: refs/heads/main\n",
        ".gitignore": "dist/\n",
        "app/.gitignore": "*.log\nbuild/\n!keep.log\n",
        "app/src/main.py": "print('hi')\n",
        "app/src/debug.log": "noise\n",
        "app/keep.log": "kept\n",
        "app/build/out.bin": "built\n",
        "app/dist/bundle.js": "bundled\n",
        "app/sub/.gitignore": "secret.txt\n",
        "app/sub/secret.txt": "s3cr3t\n",
        "app/sub/ok.txt": "ok\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


async def test_gitignore_leaves_out_what_git_ignores(dag, tmp_path):
    root = repo(tmp_path)
    app = dag.host().directory(str(root / "app"), gitignore=True)
    assert await app.glob("**") == [
        ".gitignore",
        "keep.log",
        "src/",
        "src/main.py",
        "sub/",
        "sub/.gitignore",
        "sub/ok.txt",
    ]
    whole = await dag.host().directory(str(root), gitignore=True).entries()
    assert whole == [".gitignore", "app/"]
    everything = dag.host().directory(str(root / "app"))
    assert "build/out.bin" in await everything.glob("**")
    # With include/exclude too: both apply.
    only_src = dag.host().directory(str(root / "app"), gitignore=True, include=["src/**"])
    assert await only_src.glob("**") == ["src/", "src/main.py"]
