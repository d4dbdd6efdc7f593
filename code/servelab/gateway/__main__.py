"""``python -m servelab.gateway``：以 uvicorn 在 127.0.0.1:8300 執行閘道，SIGTERM 時排水。

    SERVELAB_GATEWAY_UPSTREAMS=http://127.0.0.1:8000 python -m servelab.gateway --port 8300

收到 SIGTERM（Kubernetes 滾動更新、``docker stop``）之後：

1. ``/ready`` 立刻回 503，新的 ``/v1/…`` 請求回 503 ``draining``（負載平衡器換一台）；
2. uvicorn 關掉監聽的 socket（新連線被拒絕），進行中的串流繼續送到最後一個事件；
3. 最多等 ``drain_timeout_s`` 秒，然後結束（結束碼 0）。
"""

from __future__ import annotations

import argparse
import signal
import sys

import uvicorn

from servelab.gateway.app import create_app
from servelab.gateway.settings import GatewaySettings


# --8<-- [start:draining_server]
class DrainingServer(uvicorn.Server):
    """uvicorn.Server，收到 SIGTERM／SIGINT 時先把閘道標成「排水中」。"""

    def __init__(self, config: uvicorn.Config, app) -> None:
        super().__init__(config)
        self.gateway = app

    def handle_exit(self, sig, frame) -> None:
        self.gateway.state.draining = True  # (1)!
        super().handle_exit(sig, frame)  # (2)!


def serve(settings: GatewaySettings, host: str = "127.0.0.1", port: int = 8300) -> None:
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=settings.drain_timeout_s)  # (3)!
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # (4)!
    DrainingServer(config, app).run()
# --8<-- [end:draining_server]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args(argv)
    serve(GatewaySettings(), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
