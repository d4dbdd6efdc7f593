"""批次工作（background jobs）：送出一批請求、立刻拿到工作 id、之後再來查結果。

    POST /v1/jobs      {"requests": [{"custom_id": "a", "url": "/v1/chat/completions", "body": {...}}, ...]}
    GET  /v1/jobs/{id} → {"status": "queued" | "running" | "completed", "done": 3, "total": 5, "results": [...]}

請求的形狀同 OpenAI Batch API 輸入檔的一行。工作放在閘道行程的記憶體裡，同時最多 ``max_jobs`` 個未完成的工作
（滿了回 429），每個工作最多 ``concurrency`` 個請求同時在 vLLM 上：批次工作不會吃光線上請求的容量。
行程重啟，工作就不見了——要持久化就換成佇列服務（Lab 2.4）。
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from pydantic import ValidationError

from servelab.gateway.errors import GatewayError, error_body
from servelab.gateway.schemas import ChatCompletionRequest, CompletionRequest, Job, JobRequest, JobResult
from servelab.gateway.upstream import complete, deadline_in, encode_body

MODELS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}


# --8<-- [start:jobs]
class JobStore:
    def __init__(self, state, max_jobs: int = 16, concurrency: int = 4, keep: int = 256) -> None:
        self.state, self.max_jobs, self.concurrency, self.keep = state, max_jobs, concurrency, keep
        self.jobs: dict[str, Job] = {}
        self.tasks: set[asyncio.Task] = set()

    def submit(self, request: JobRequest) -> Job:
        if sum(job.status != "completed" for job in self.jobs.values()) >= self.max_jobs:  # (1)!
            raise GatewayError(429, f"Too many unfinished jobs (limit {self.max_jobs})", code="too_many_jobs",
                               headers={"Retry-After": str(self.state.settings.retry_after_s)})
        job = Job(id=f"job-{uuid.uuid4().hex}", status="queued", created_at=time.time(),
                  total=len(request.requests))
        self.jobs[job.id] = job
        task = asyncio.create_task(self._run(job, request))  # (2)!
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self._forget_old()
        return job

    async def _run(self, job: Job, request: JobRequest) -> None:
        job.status = "running"
        limit = asyncio.Semaphore(self.concurrency)

        async def one(line) -> JobResult:
            async with limit:
                status, body = await self._call(line.url, line.body)
                job.done += 1
                return JobResult(custom_id=line.custom_id, status_code=status, body=body)

        job.results = list(await asyncio.gather(*(one(line) for line in request.requests)))
        job.status, job.completed_at = "completed", time.time()

    async def _call(self, url: str, body: dict) -> tuple[int, dict]:
        try:
            parsed = MODELS[url].model_validate({**body, "stream": False})  # (3)!
            payload = parsed.model_dump(exclude_unset=True)
            content = encode_body(payload)
            settings = self.state.settings
            status, raw = await complete(self.state, url, content, None, deadline_in(settings.request_timeout_s))
            return status, json.loads(raw)
        except ValidationError as error:
            first = error.errors()[0]
            return 400, error_body(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}")
        except GatewayError as error:
            return error.status, error_body(error.status, error.message, param=error.param, code=error.code)
# --8<-- [end:jobs]

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise GatewayError(404, f"No job {job_id!r}", param="job_id", code="job_not_found")
        return job

    def _forget_old(self) -> None:
        done = [j for j in self.jobs.values() if j.status == "completed"]
        for job in sorted(done, key=lambda j: j.completed_at or 0)[:max(0, len(self.jobs) - self.keep)]:
            del self.jobs[job.id]

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
