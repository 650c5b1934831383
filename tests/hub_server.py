"""A real, local, read-only Hub for tests: olah serving git repositories from a folder.

olah (pinned 0.5.4 in the ``test`` extra) answers the Hub's HTTP API for plain git
repositories under ``<mirrors>/models/<ns>/<name>`` and ``<mirrors>/datasets/<ns>/<name>``,
so ``snapshot_download``, ``from_pretrained``, ``datasets.load_dataset`` and
``ModelCard.load`` run against it unchanged. It accepts no uploads.

huggingface_hub, datasets and transformers read ``HF_ENDPOINT`` once, at import, so
code that pulls from this server runs in a fresh Python process (``LocalHub.run_python``)
with ``HF_ENDPOINT`` pointing here and the offline switches of ``conftest.py`` removed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "hbg-tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "hbg-tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,  # the user's git config (signing, hooks) stays out of it
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=folder, env={**os.environ, **_GIT_ENV}, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


class LocalHub:
    """Start with ``start()``; add repos with ``add_repo``; stop with ``stop()``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.hf_home = self.root / "hf-home"
        self._process: subprocess.Popen | None = None
        self._log = None

    # -- repositories -------------------------------------------------------
    def add_repo(self, repo_type: str, repo_id: str, folder: Path, message: str = "publish") -> str:
        """Commit the files a publish staged in ``folder`` (what its upload sends) to repo ``main``; return the sha.

        A folder that no publish staged (a hand-made repo) is committed whole. Calling it
        again for the same repo adds a new commit on top, so revisions can be tested.
        """
        from hf_backdoor_guard.hub.staging import staged_files

        files = staged_files(folder) or [p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()]

        kind = {"model": "models", "dataset": "datasets"}[repo_type]
        repo = self.mirrors / kind / repo_id
        fresh = not (repo / ".git").is_dir()
        repo.mkdir(parents=True, exist_ok=True)
        if fresh:
            _git(repo, "init", "-q", "-b", "main")
        else:  # a new commit holds exactly the new files
            for child in repo.iterdir():
                if child.name != ".git":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        for name in files:
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / name, target)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", message)
        return _git(repo, "rev-parse", "HEAD")

    # -- server -------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        netloc = f"127.0.0.1:{self.port}"
        # hf-* point at a closed port: with offline = true olah never goes upstream anyway.
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.root / "olah-cache"}"\n'
            'hf-scheme = "http"\nhf-netloc = "127.0.0.1:9"\nhf-lfs-netloc = "127.0.0.1:9"\n'
            f'mirror-scheme = "http"\nmirror-netloc = "{netloc}"\nmirror-lfs-netloc = "{netloc}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\noffline = true\n"
        )
        self._log = open(self.root / "olah.log", "w")
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from olah.server import cli; cli()", "-c", str(config)],
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        # "/" answers 500 on olah; any API path that answers (even 401 for an unknown repo) means ready.
        probe = f"{self.endpoint}/api/models/probe/probe/revision/main"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a CI proxy must not answer for us
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"olah exited early; log:\n{self.log(4000)}")
            try:
                direct.open(probe, timeout=1)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"olah did not answer on {self.endpoint} within {timeout}s; log:\n{self.log(4000)}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self, tail: int | None = None) -> str:
        path = self.root / "olah.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-tail:] if tail else text

    # -- clients ------------------------------------------------------------
    def client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(self.hf_home),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            NO_PROXY="127.0.0.1,localhost",
        )
        env.pop("HF_TOKEN", None)
        return env

    def run_python(self, code: str, timeout: float = 120.0) -> dict:
        """Run ``code`` in a fresh interpreter pointed at this hub; it must print one JSON object last."""
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.client_env(), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"client failed (rc {done.returncode}):\n{done.stderr[-4000:]}\nolah log:\n{self.log(4000)}")
        return json.loads(done.stdout.strip().splitlines()[-1])
