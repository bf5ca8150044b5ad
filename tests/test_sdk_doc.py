"""The worked example of docs/sdk.md runs as written against a real service."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.conftest import API_KEY, Api

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_DOC = REPO_ROOT / "docs" / "sdk.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# The example waits up to 10 s for the revocation, and the rest takes well under a second.
EXAMPLE_TIMEOUT_S = 30.0


def example_program() -> str:
    """Return the Python blocks of docs/sdk.md, in order, as one program."""
    blocks = PYTHON_BLOCK.findall(SDK_DOC.read_text(encoding="utf-8"))
    assert blocks, f"no python code blocks in {SDK_DOC}"
    return "\n\n".join(blocks)


async def run_example(api: Api) -> tuple[int, str, str]:
    environ = {**os.environ, "SESSION_STORE_URL": api.base_url, "SESSION_STORE_API_KEY": API_KEY,
               "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", example_program(), cwd=REPO_ROOT, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), EXAMPLE_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def test_sdk_doc_defaults_match_readme() -> None:
    program = example_program()
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")

    assert '"http://127.0.0.1:8080"' in program
    assert "--port 8080" in readme
    assert "SESSION_STORE_API_KEYS=dev-key-change-me-0123456789" in readme
    assert '"dev-key-change-me-0123456789"' in program


async def test_sdk_doc_example_runs(api: Api) -> None:
    returncode, stdout, stderr = await run_example(api)

    assert returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("signed in on Sarah's iPhone: sess_")
    assert "signed out 1 other device(s)" in lines
    assert "the laptop is signed out" in lines
    assert "password changed: revoked 1 session(s)" in lines
    assert lines[-1] == "phone session ended: revoked"
    assert API_KEY not in stdout + stderr


async def test_sdk_doc_example_ends_sessions(api: Api) -> None:
    returncode, _, stderr = await run_example(api)

    status, body, _ = await api.manage("GET", "/v1/users/u-123/sessions")
    assert returncode == 0, stderr
    assert status == 200
    assert body["sessions"] == []
