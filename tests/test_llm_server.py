"""How the local LLM server's start failures read, without llama-cpp-python installed."""

from __future__ import annotations

import subprocess
import sys

from rag.llm_server import start_failure_message


def test_sigill_asks_for_a_rebuild_for_this_cpu():
    # A process that dies of an illegal instruction, as a llama build for another CPU does.
    died = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"])
    message = start_failure_message(died.returncode)
    assert "make llm" in message and "CPU" in message
    assert "make llm" not in start_failure_message(1) and "退出码 1" in start_failure_message(1)
