"""What every lesson shares: the bundled model, the engine and server launchers, the settings.

No lesson starts an engine its own way: it calls one of these.
"""

from servelab.runtime.model import SERVED_NAME, ModelPrepareError, model_info, prepare_model
from servelab.runtime.process import (
    ModelPathError, PortInUseError, ServerDiedError, ServerStartError, ServerTimeoutError,
)
from servelab.runtime.settings import Settings, get_settings
from servelab.runtime.triton_server import (
    TRITON_PORTS, TritonEndpoint, TritonSetupError, triton_endpoint, triton_server,
)
from servelab.runtime.vllm_engine import (
    VLLM_PORT, VLLMEndpoint, dummy_llama_8b, engine_kwargs, offline_llm, vllm_endpoint, vllm_server,
)

__all__ = [
    "SERVED_NAME", "TRITON_PORTS", "VLLM_PORT", "ModelPathError", "PortInUseError", "ServerDiedError",
    "ServerTimeoutError", "ModelPrepareError", "ServerStartError", "Settings", "TritonEndpoint", "TritonSetupError",
    "VLLMEndpoint", "dummy_llama_8b", "engine_kwargs", "get_settings", "model_info", "offline_llm",
    "prepare_model", "triton_endpoint", "triton_server", "vllm_endpoint", "vllm_server",
]
