"""01-Basic_API：閘道的骨架——FastAPI 應用程式、OpenAI 形狀的 pydantic 模型、錯誤信封、健康與就緒檢查。

閘道本身在 ``servelab.gateway``（Lab 2.4 直接匯入部署它）；這一課的程式把它跑起來、看它產生的 OpenAPI、
用官方 ``openai`` 用戶端原封不動地透過它呼叫 vLLM，並對它送出 30 多種壞掉或惡意的請求。

    servelab run vllm/lab2_3/l01_basic_api          # 對本書的 vLLM 伺服器跑一遍，寫出 results/…/*.md
"""

# --8<-- [start:context]
import json

import httpx

from servelab.gateway.app import create_app
from servelab.gateway.inprocess import running_gateway  # 在一條執行緒裡跑閘道（第 4 課第 2.1 節列出全文）
from servelab.gateway.settings import GatewaySettings
from servelab.runtime import VLLMEndpoint, vllm_endpoint
from servelab.runtime.results import write_results

LESSON = "vllm/lab2_3/l01_basic_api"


def gateway_settings(upstream: VLLMEndpoint, **overrides) -> GatewaySettings:
    """閘道的設定：上游是這台 vLLM，其他照預設（或 overrides）。"""
    key = None if upstream.api_key in (None, "EMPTY") else upstream.api_key
    return GatewaySettings(upstreams=[upstream.base_url], upstream_api_key=key, **overrides)


# --8<-- [end:context]


# --8<-- [start:openapi]
def openapi_summary(settings: GatewaySettings | None = None) -> list[dict]:
    """FastAPI 從路由與 pydantic 模型產生的 OpenAPI：每條路由、請求模型、幾個欄位的邊界。"""
    spec = create_app(settings or GatewaySettings()).openapi()  # (1)!
    schemas = spec["components"]["schemas"]
    rows = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref", ""))
            model = ref.rsplit("/", 1)[-1] or None
            props = schemas.get(model, {}).get("properties", {}) if model else {}
            bounds = [f"{name} {_bounds(props[name])}" for name in ("temperature", "top_p", "n", "messages")
                      if name in props and _bounds(props[name])]
            rows.append({"route": f"{method.upper()} {path}", "request": model or "—",
                         "errors": ", ".join(sorted(c for c in op.get("responses", {}) if c >= "400")),
                         "bounds": "; ".join(bounds) or "—"})
    return rows


def _bounds(prop: dict) -> str:
    prop = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
    parts = [f"{sym} {prop[key]}" for key, sym in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                  ("maximum", "≤"), ("minItems", "項數 ≥"), ("maxItems", "項數 ≤"))
             if key in prop]
    return ", ".join(parts)
# --8<-- [end:openapi]


# --8<-- [start:openai_client]
def openai_through_gateway(gateway_url: str, model: str, api_key: str = "unused") -> dict:
    """官方 openai 用戶端，只把 base_url 換成閘道：chat、串流、completions 都照常運作。"""
    from openai import OpenAI

    client = OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key)  # (1)!
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count to five."}], max_tokens=8,
        temperature=0, stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage  # (2)!
    text = client.completions.create(model=model, prompt="The sky is", max_tokens=4, temperature=0)
    return {"chat": chat.choices[0].message.content, "chat_usage": chat.usage.model_dump(),
            "stream": "".join(pieces), "stream_usage": usage.model_dump() if usage else None,
            "completion": text.choices[0].text, "models": [m.id for m in client.models.list().data]}
# --8<-- [end:openai_client]


# --8<-- [start:health]
def probes(gateway_url: str) -> dict:
    """liveness（/health：行程活著）與 readiness（/ready：至少一個上游健康、沒有在排水）。"""
    with httpx.Client(timeout=5) as http:
        live, ready = http.get(f"{gateway_url}/health"), http.get(f"{gateway_url}/ready")
    return {"health": live.status_code, "ready": ready.status_code, "ready_body": ready.json()}
# --8<-- [end:health]


# --8<-- [start:bad_requests]
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def bad_requests(model: str) -> list[tuple[str, str, str, dict, int]]:
    """(說明, 方法, 路徑, httpx 參數, 期望的狀態碼)：型別錯、缺欄位、超出範圍、壞 JSON、太大、未知模型、Unicode……"""
    ok = {"model": model, "messages": MSG, "max_tokens": 1}
    json_ct = {"Content-Type": "application/json"}
    return [
        ("model 缺少", "POST", CHAT, {"json": {"messages": MSG}}, 400),
        ("messages 缺少", "POST", CHAT, {"json": {"model": model}}, 400),
        ("messages 是空陣列", "POST", CHAT, {"json": {**ok, "messages": []}}, 400),
        ("messages 是字串", "POST", CHAT, {"json": {**ok, "messages": "hi"}}, 400),
        ("role 不存在", "POST", CHAT, {"json": {**ok, "messages": [{"role": "wizard", "content": "hi"}]}}, 400),
        ("content 是數字", "POST", CHAT, {"json": {**ok, "messages": [{"role": "user", "content": 42}]}}, 400),
        ("temperature 是字串", "POST", CHAT, {"json": {**ok, "temperature": "hot"}}, 400),
        ("temperature 是 \"0.7\"（strict）", "POST", CHAT, {"json": {**ok, "temperature": "0.7"}}, 400),
        ("temperature = -1", "POST", CHAT, {"json": {**ok, "temperature": -1}}, 400),
        ("temperature = 3", "POST", CHAT, {"json": {**ok, "temperature": 3}}, 400),
        ("top_p = 0", "POST", CHAT, {"json": {**ok, "top_p": 0}}, 400),
        ("top_p = 1.5", "POST", CHAT, {"json": {**ok, "top_p": 1.5}}, 400),
        ("n = 0", "POST", CHAT, {"json": {**ok, "n": 0}}, 400),
        ("n = 1000", "POST", CHAT, {"json": {**ok, "n": 1000}}, 400),
        ("max_tokens = 0", "POST", CHAT, {"json": {**ok, "max_tokens": 0}}, 400),
        ("max_tokens = -5", "POST", CHAT, {"json": {**ok, "max_tokens": -5}}, 400),
        ("max_tokens 巨大（10⁹）", "POST", CHAT, {"json": {**ok, "max_tokens": 10**9}}, 400),
        ("max_tokens 是浮點數 1.5", "POST", CHAT, {"json": {**ok, "max_tokens": 1.5}}, 400),
        ("presence_penalty = 5", "POST", CHAT, {"json": {**ok, "presence_penalty": 5}}, 400),
        ("logit_bias 超出 ±100", "POST", CHAT, {"json": {**ok, "logit_bias": {"42": 500}}}, 400),
        ("stream 是字串 \"yes\"", "POST", CHAT, {"json": {**ok, "stream": "yes"}}, 400),
        ("stream_options 但沒有 stream", "POST", CHAT, {"json": {**ok, "stream_options": {"include_usage": True}}}, 400),
        ("stop 超過 16 個", "POST", CHAT, {"json": {**ok, "stop": ["x"] * 17}}, 400),
        ("prompt 超過 context 上限", "POST", "/v1/completions",
         {"json": {"model": model, "prompt": [905] * 2100, "max_tokens": 1}}, 400),  # (1)!
        ("token id 超出詞彙表", "POST", "/v1/completions",
         {"json": {"model": model, "prompt": [10**8], "max_tokens": 1}}, 400),
        ("prompt 是空字串", "POST", "/v1/completions", {"json": {"model": model, "prompt": "", "max_tokens": 1}}, 400),
        ("vLLM 擴充欄位型別錯（top_k: \"abc\"）", "POST", CHAT, {"json": {**ok, "top_k": "abc"}}, 400),
        ("未知的模型", "POST", CHAT, {"json": {**ok, "model": "gpt-9"}}, 404),
        ("壞掉的 JSON", "POST", CHAT, {"content": b'{"model": ', "headers": json_ct}, 400),
        ("JSON 是陣列不是物件", "POST", CHAT, {"content": b"[1, 2, 3]", "headers": json_ct}, 400),
        ("JSON 巢狀 10 萬層", "POST", CHAT, {"content": b"[" * 100_000, "headers": json_ct}, 400),
        ("NaN 當 temperature", "POST", CHAT, {"content": b'{"model":"%s","messages":[{"role":"user","content":"hi"}],'
                                                           b'"temperature":NaN}' % model.encode(), "headers": json_ct}, 400),
        ("不是 UTF-8 的位元組", "POST", CHAT, {"content": b'{"model": "\xff\xfe"}', "headers": json_ct}, 400),
        ("孤立的 surrogate（\\ud800）", "POST", CHAT,
         {"content": b'{"model":"%s","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":1}' % model.encode(),
          "headers": json_ct}, 400),
        ("Content-Type: text/plain", "POST", CHAT, {"content": json.dumps(ok), "headers": {"Content-Type": "text/plain"}}, 415),
        ("沒有 Content-Type（form 編碼）", "POST", CHAT, {"data": {"model": model}}, 415),
        ("10 MB 的內容", "POST", CHAT, {"content": b'{"model":"' + b"a" * 10_000_000 + b'"}', "headers": json_ct}, 413),
        ("model 名稱 300 字元", "POST", CHAT, {"json": {**ok, "model": "m" * 300}}, 400),
        ("GET 到 POST 的路由", "GET", CHAT, {}, 405),
        ("不存在的路徑", "GET", "/v1/engines", {}, 404),
        ("查不存在的批次工作", "GET", "/v1/jobs/job-nope", {}, 404),
        ("批次工作的 url 不支援", "POST", "/v1/jobs",
         {"json": {"requests": [{"custom_id": "a", "url": "/v1/embeddings", "body": {}}]}}, 400),
    ]


def probe_bad_requests(gateway_url: str, model: str, headers: dict | None = None) -> list[dict]:
    """把每個壞請求送給閘道，記下狀態碼與信封；最後確認閘道還在服務。"""
    rows = []
    with httpx.Client(base_url=gateway_url, timeout=60, headers=headers or {}) as http:
        for name, method, path, kwargs, expected in bad_requests(model):
            response = http.request(method, path, **kwargs)
            error = _envelope(response)
            rows.append({"case": name, "expected": expected, "status": response.status_code,
                         "type": error.get("type"), "code": error.get("code"),
                         "message": str(error.get("message", ""))[:70], "envelope": bool(error)})
        alive = http.post(CHAT, json={"model": model, "messages": MSG, "max_tokens": 1})
    rows.append({"case": "之後的正常請求", "expected": 200, "status": alive.status_code, "type": None,
                 "code": None, "message": "", "envelope": False})
    return rows


def _envelope(response: httpx.Response) -> dict:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys() else {}
# --8<-- [end:bad_requests]


# --8<-- [start:exercise_envelope]
def envelope_problems(response: httpx.Response) -> list[str]:
    """練習 1：一個錯誤回應符不符合 OpenAI 的信封？回傳問題清單（空的 = 符合）。"""
    problems = []
    if response.status_code < 400:
        problems.append(f"status {response.status_code} is not an error")
    if not response.headers.get("content-type", "").startswith("application/json"):
        problems.append("not JSON")
        return problems
    error = response.json().get("error") if isinstance(response.json(), dict) else None
    if not isinstance(error, dict):
        return problems + ["no 'error' object"]
    problems += [f"missing {key!r}" for key in ("message", "type", "param", "code") if key not in error]
    if not isinstance(error.get("message"), str) or not error.get("message"):
        problems.append("message is not a non-empty string")
    return problems
# --8<-- [end:exercise_envelope]


# --8<-- [start:exercise_strict]
def strict_vs_lax(value) -> dict:
    """練習 2：同一個 temperature 值，在 strict 與 lax 的 pydantic 模型下各變成什麼？"""
    from pydantic import BaseModel, ConfigDict, ValidationError

    class Lax(BaseModel):
        temperature: float

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True)
        temperature: float

    out = {}
    for name, model in (("lax", Lax), ("strict", Strict)):
        try:
            out[name] = model.model_validate_json(json.dumps({"temperature": value})).temperature
        except ValidationError as error:
            out[name] = f"error: {error.errors()[0]['type']}"
    return out
# --8<-- [end:exercise_strict]


BAD_COLUMNS = {"case": "請求", "expected": "期望", "status": "HTTP", "type": "type", "code": "code"}
OPENAPI_COLUMNS = {"route": "路由", "request": "請求模型", "errors": "錯誤回應", "bounds": "邊界（節錄）"}


def write_bad_requests(rows: list[dict], root=None):
    return write_results(LESSON, "bad_requests", [{k: r[k] for k in BAD_COLUMNS} for r in rows], BAD_COLUMNS,
                         root=root)


def write_openapi(rows: list[dict], root=None):
    return write_results(LESSON, "openapi", rows, OPENAPI_COLUMNS, root=root)


def main() -> int:
    write_openapi(openapi_summary())
    with vllm_endpoint() as upstream, running_gateway(gateway_settings(upstream)) as gateway:
        print(json.dumps(probes(gateway), ensure_ascii=False))
        print(json.dumps(openai_through_gateway(gateway, upstream.model), ensure_ascii=False, indent=1))
        rows = probe_bad_requests(gateway, upstream.model)
        print(write_bad_requests(rows))
    return 0 if all(r["status"] == r["expected"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
