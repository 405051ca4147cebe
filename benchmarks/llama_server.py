"""llama.cpp's llama-server as the benchmarks use it: started on 127.0.0.1 and stopped, or reached at a URL, and
asked for completions (greedy, stop strings), several requests at a time.

Not part of the package: llama.cpp is a peer the benchmarks measure against (docs/performance.md says how to build
it from the source inside llama-cpp-python's sdist), and a user's GGUF is served as docs/serving.md shows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


class LlamaServer:
    """`llama-server -m GGUF` on a free port of 127.0.0.1 with `slots` parallel slots (each with its own prompt
    cache and `context_per_slot` positions), while the with-block runs; .url is its address."""

    def __init__(self, binary: str, gguf: str, slots: int = 1, threads: int | None = None, context_per_slot=2048):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(self.port),
                        "-t", str(threads or os.cpu_count()), "--parallel", str(slots),
                        "-c", str(context_per_slot * slots)]  # fmt: skip
        self.process = None

    def __enter__(self) -> LlamaServer:
        # its log goes to a file: a pipe nobody reads fills after a few hundred requests and the server stops
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{' '.join(self.command)} exited: {self.log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:  # not listening yet, or 503 while the model loads
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"{' '.join(self.command)}: no answer on {self.url}/health after 120 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait()
        self.log.close()


def completions(url: str, prompts: list, max_new_tokens: int, stops: list[str], parallel: int = 1) -> list[str]:
    """Each prompt's greedy completion (a prompt: text, or token ids, which the server takes as they are), asked
    `parallel` at a time in the prompts' order, so a slot's prompt cache meets a context's questions one after
    another; at most max_new_tokens, cut at the first stop string or end of generation."""
    body = {"n_predict": max_new_tokens, "temperature": 0, "top_k": 1, "stop": stops, "cache_prompt": True}

    def complete(prompt) -> str:
        return post(f"{url}/completion", {**body, "prompt": prompt})["content"]

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(complete, prompts))
