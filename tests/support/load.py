"""Steady client load in a background thread: what a client saw, by who answered."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import aiohttp


class SteadyLoad:
    """POSTs the same body in a loop from `concurrency` clients until stopped."""

    def __init__(self, url: str, key: str, body: bytes, concurrency: int = 4) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.body = body
        self.concurrency = concurrency
        self.seen: Counter[tuple[str, int]] = Counter()  # (deployment, status) -> count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def failures_from(self, deployment: str) -> int:
        return sum(n for (d, status), n in self.seen.items() if d == deployment and status != 200)

    def answered_by(self, deployment: str) -> int:
        return sum(n for (d, _), n in self.seen.items() if d == deployment)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                async with session.post(self.url, data=self.body, headers=self.headers) as response:
                    await response.read()
                    who = response.headers.get("azureml-model-deployment", "-")
                    self.seen[(who, response.status)] += 1
            except aiohttp.ClientError:
                self.seen[("-", 0)] += 1
            await asyncio.sleep(0.005)
