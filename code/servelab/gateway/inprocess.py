"""在這個行程的一條執行緒裡跑閘道（真的 TCP 埠）：課程、筆記本與測試共用，啟動只要幾十毫秒。

部署用的是 ``python -m servelab.gateway``（SIGTERM 時排水）；這裡的版本給同一個行程裡的用戶端、Prometheus 與測試用。
"""

# --8<-- [start:running_gateway]
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from servelab.gateway.app import create_app
from servelab.gateway.settings import GatewaySettings


def free_port() -> int:
    """作業系統給的一個空閒埠（閘道的映像只帶 servelab/gateway，所以不借 servelab.runtime 的版本）。"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_gateway(settings: GatewaySettings, port: int | None = None, quiet: bool = True,
                    start_timeout_s: float = 30.0) -> Iterator[str]:
    """uvicorn 跑在一條 daemon 執行緒裡；yield 閘道的基底網址，離開時停掉它。"""
    port = port or free_port()
    log = logging.getLogger("servelab.gateway")
    level = log.level
    if quiet:
        log.setLevel(logging.WARNING)  # 每個請求一行的 JSON 日誌在這裡不印
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))  # (1)!
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start (see the log above)")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        log.setLevel(level)
# --8<-- [end:running_gateway]


def wait_until_ready(url: str, timeout_s: float = 15.0) -> None:
    """等到閘道的 /ready 回 200（它的第一次健康檢查在啟動時；機器很忙時，那一次可能失敗，下一次在 health_interval_s 之後）。"""
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/ready", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway at {url} is not ready after {timeout_s:g} s")
        time.sleep(0.1)
