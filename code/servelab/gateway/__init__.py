"""servelab.gateway：放在 vLLM 前面、與 OpenAI API 相容的 FastAPI 閘道（Lab 2.3 建造，Lab 2.4 部署與加固）。

    python -m servelab.gateway                                   # 127.0.0.1:8300
    uvicorn --factory servelab.gateway.app:create_app --port 8300

設定一律來自 ``SERVELAB_GATEWAY_*`` 環境變數（:class:`~servelab.gateway.settings.GatewaySettings`）。
"""

from servelab.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]


def create_app(settings: GatewaySettings | None = None):
    """Lazy re-export of :func:`servelab.gateway.app.create_app` (importing settings stays cheap)."""
    from servelab.gateway.app import create_app as _create_app

    return _create_app(settings)
