# -*- test-case-name: tests.test_debian -*-
"""Build the Debian package from this tree, once per version of its sources.

`build_deb` copies the tree's files (tracked and untracked, not ignored) into a scratch directory
under ``.cache/deb/``, runs ``dpkg-buildpackage -us -uc -b`` there with a plain PATH (pyenv's shims
break dh-virtualenv), and keeps the ``.deb`` under a digest of those files, the interpreter and
dh-virtualenv's version: an unchanged tree reuses it. ``python -m tests.debian_build`` prints its
path (building it if needed).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / ".cache" / "deb"
PLAIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_TIMEOUT = 1200.0
NOT_PACKAGED = ("tests/", "bench/", ".ci/")
KEEP = 3


class BuildError(Exception):
    """dpkg-buildpackage failed; the message has the end of its output."""


def source_files() -> list[str]:
    """The tree's files as git sees them (tracked, and untracked but not ignored), less those the
    package does not carry: a change to a test does not rebuild it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    names = {name for name in listed.decode().split("\0") if name and (REPO_ROOT / name).is_file()}
    return sorted(name for name in names if not name.startswith(NOT_PACKAGED))


def source_digest(files: list[str]) -> str:
    """What decides whether a built package is still this tree's."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (REPO_ROOT / name).read_bytes() + b"\0")
    tools = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "dh-virtualenv", "python3"], capture_output=True, text=True
    ).stdout
    python = Path("/usr/bin/python3").resolve().name
    digest.update(f"{tools} {python}".encode())
    return digest.hexdigest()[:16]


def build_deb(timeout: float = BUILD_TIMEOUT) -> tuple[Path, float]:
    """The package built from this tree, and the seconds this call spent building it (0 if reused)."""
    files = source_files()
    key = source_digest(files)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = sorted((CACHE / key).glob("mcpd_*.deb"))
        if built:
            return built[0], 0.0
        started = time.monotonic()
        scratch = CACHE / f"build-{key}"
        shutil.rmtree(scratch, ignore_errors=True)
        source = scratch / "mcpd"
        for name in files:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
        log = scratch / "build.log"
        # The machine's environment (pip's index settings, proxies) less what points at another
        # Python: pyenv, a virtualenv.
        env = {
            name: value for name, value in os.environ.items() if not name.startswith(("PYENV", "PYTHON", "VIRTUAL_ENV"))
        }
        env.update(PATH=PLAIN_PATH, LANG="C.UTF-8")
        with open(log, "wb") as out:
            done = subprocess.run(
                ["dpkg-buildpackage", "-us", "-uc", "-b"],
                cwd=source,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-6000:]
            raise BuildError(f"dpkg-buildpackage exited with {done.returncode} (log: {log}):\n{tail}")
        (CACHE / key).mkdir(exist_ok=True)
        for artifact in scratch.glob("mcpd_*.deb"):
            shutil.move(str(artifact), CACHE / key / artifact.name)
        shutil.copy2(log, CACHE / key / "build.log")
        shutil.rmtree(scratch, ignore_errors=True)
        _forget_old_builds(keep=key)
        return sorted((CACHE / key).glob("mcpd_*.deb"))[0], time.monotonic() - started


def _forget_old_builds(keep: str) -> None:
    """Keep the `KEEP` most recent builds (other work trees may share the cache)."""
    builds = sorted(
        (path for path in CACHE.iterdir() if path.is_dir() and not path.name.startswith("build-")),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for old in builds[KEEP:]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    try:
        path, seconds = build_deb()
    except BuildError as e:
        sys.exit(str(e))
    print(path, f"(built in {seconds:.0f}s)" if seconds else "(reused)")
