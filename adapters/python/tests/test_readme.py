"""The hello worlds of the READMEs, run as written against a real gateway, with the gateway's
address in place of 127.0.0.1:7422: adapters/python/README.md's first python block (a whole
program), and the repository README's python block (the body of an async function)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

HERE = os.path.dirname(__file__)


def python_block(readme: str) -> str:
    with open(os.path.join(HERE, readme)) as f:
        block = re.search(r"```python\n(.*?)```", f.read(), re.S)
    assert block, f"{readme} has a python code block"
    return block.group(1)


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_adapter_readme_hello_world(gateway: str) -> None:
    out = run(python_block("../README.md").replace("127.0.0.1:7422", gateway))
    assert "greetings.world" in out and "hello" in out, out


def test_repository_readme_hello_world(gateway: str) -> None:
    body = python_block("../../../README.md").replace("127.0.0.1:7422", gateway)
    program = "import asyncio\nimport nexus_client\n\nasync def main():\n" + textwrap.indent(body, "    ")
    out = run(program + "\nasyncio.run(main())\n")
    assert out.strip() == "greetings.world hello", out
