"""Locust users for the allocator: clients that send bundled questions to ``/v1/solve``.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 1m

Questions come from a bundled data set (``TTC_LOADTEST_DATASET``, default ``svamp``) so that
the replay backend can answer them.
"""

from __future__ import annotations

import itertools
import os
import random

from locust import HttpUser, between, task

from online.datasets import load_dataset

_QUESTIONS = [q.question for q in load_dataset(os.environ.get("TTC_LOADTEST_DATASET", "svamp"))]
_USER_SEEDS = itertools.count()


class SolveUser(HttpUser):
    """Sends one question at a time, with a short pause between requests."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.rng = random.Random(next(_USER_SEEDS))

    @task
    def solve(self) -> None:
        question = self.rng.choice(_QUESTIONS)
        with self.client.post(
            "/v1/solve", json={"question": question}, name="/v1/solve", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
            elif "answer" not in response.json():
                response.failure("response has no 'answer' field")
