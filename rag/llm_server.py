"""The local LLM: llama-cpp-python's own OpenAI-compatible server on 127.0.0.1, started by ``rag llm``.

The model is a Qwen2.5-Coder Instruct GGUF fetched by ``rag.model_fetch`` (``qwen-1.5b`` by default,
``qwen-0.5b`` for the tests). The server runs as a child process started with the same Python; it
is stopped by its PID. llama-cpp-python is an optional extra (``pip install -e '.[llm]'``, built
with AMX off: see the Makefile's ``llm`` target).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import RagError
from .model_fetch import SPECS, is_ready, model_file

DEFAULT_MODEL = "qwen-1.5b"
MODEL_ALIAS = "local"
START_TIMEOUT = 180.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """The verified GGUF file of a bundled model (raises ``RagError`` when it is not fetched)."""
    if name not in SPECS or SPECS[name].kind != "file":
        raise RagError(f"未知的本地大模型 {name!r} / unknown local model; choose qwen-0.5b or qwen-1.5b")
    spec = SPECS[name]
    if not is_ready(spec):
        raise RagError(f"本地大模型尚未下载，请先运行 `make llm` 或 `python -m rag.model_fetch {name}` / "
                       f"local model not fetched; run `python -m rag.model_fetch {name}`")
    return model_file(spec)


@dataclass
class LocalLLM:
    """A running llama-cpp-python server: its base URL and process."""

    process: subprocess.Popen
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``…/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def server_command(model: Path, host: str, port: int, context: int = 4096, threads: int | None = None) -> list[str]:
    """The command line of llama-cpp-python's server for ``model``."""
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_ALIAS,
            "--host", host, "--port", str(port), "--n_ctx", str(context), "--n_threads", str(threads)]


def start_failure_message(returncode: int) -> str:
    """The user's message for a server that exited before it answered; SIGILL means a build for another CPU."""
    if returncode == -signal.SIGILL:
        return ("本地大模型服务因非法指令退出：llama-cpp-python 是为另一种 CPU 编译的，"
                "请运行 `make llm` 为本机重新编译 / "
                "llama server died with SIGILL: llama-cpp-python was built for another CPU; run `make llm`")
    return f"本地大模型服务启动失败（退出码 {returncode}）/ llama server exited"


def start_local_llm(name: str = DEFAULT_MODEL, host: str = "127.0.0.1", port: int | None = None,
                    log_file: Path | None = None, timeout: float = START_TIMEOUT) -> LocalLLM:
    """Start the server for a bundled model and wait until it answers ``/v1/models``."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise RagError("未安装 llama-cpp-python，请先运行 `make llm` / llama-cpp-python is not installed; "
                       "run `make llm`") from exc
    model = gguf_path(name)
    port = port or free_port(host)
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(server_command(model, host, port), stdout=output, stderr=subprocess.STDOUT)
    server = LocalLLM(process, host, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RagError(start_failure_message(process.returncode))
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    server.stop()
    raise RagError("本地大模型服务启动超时 / llama server did not start in time")
