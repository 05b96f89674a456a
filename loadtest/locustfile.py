"""Locust users for the allocator: clients that send bundled questions to ``/v1/solve``.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 1m

Questions come from a bundled data set (``TTC_LOADTEST_DATASET``, default ``svamp``) so that
the replay backend can answer them.

With ``TTC_LOADTEST_OPERATOR=1`` one more user, `OperatorUser`, retargets the budget now and
then and sets it back. It is off by default because a retarget makes the mean cost of a run
differ from the budget in force at its end, which is what ``loadtest/run.py`` checks.
``loadtest/run.py --operator`` turns it on.
"""

from __future__ import annotations

import itertools
import os
import random
import time

from locust import HttpUser, between, constant, task

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


class OperatorUser(HttpUser):
    """An operator who halves the budget for ``hold_s`` seconds, then restores it.

    Exactly one runs (``fixed_count``). It waits ``wait_time`` seconds before its first change
    and between changes. The halved budget is never below 1, the cost of the cheapest action.
    If the user is stopped while the lower budget is in force, `on_stop` restores the original.
    """

    abstract = os.environ.get("TTC_LOADTEST_OPERATOR") != "1"
    fixed_count = 1
    wait_time = constant(30.0)
    hold_s = 10.0

    def on_start(self) -> None:
        self.original_budget: float | None = None
        # Let the other users' traffic settle before the first retarget.
        self.wait()

    def _put_budget(self, budget: float) -> bool:
        with self.client.put(
            "/v1/budget", json={"budget": budget}, name="/v1/budget", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return False
            return True

    @task
    def retarget(self) -> None:
        with self.client.get("/v1/budget", name="/v1/budget", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            budget = float(response.json()["budget"])
        if not self._put_budget(max(1.0, budget / 2)):
            return
        self.original_budget = budget
        time.sleep(self.hold_s)
        if self._put_budget(budget):
            self.original_budget = None

    def on_stop(self) -> None:
        if self.original_budget is not None:
            self._put_budget(self.original_budget)
            self.original_budget = None
