"""The Ray Serve application: HTTP gateway, dual controller and replay backend.

Request path: the gateway validates the request, computes the question's features, takes the
policy's action at its view of the price (`online.price_view.PriceView`), reserves the action's
cost in that view, draws and votes the samples through the worker pool, and records the billed
cost. With probability ``explore`` a request is a probe instead: it runs the largest action, and
its samples train the policy against their own majority. ``POST /v1/stream`` takes each record
of its body down the same path, a bounded number at a time (`serve.ingest`). With the
sequential policy the gateway draws in rounds instead, asking the policy after each round
whether more samples pay at the price, and reserves the policy's mean cost at that price. Each
gateway replica reports finished requests to the controller in batches (at least every
``report_interval_s``) and adopts the controller's price, budget and exploration rate in
return, so no request waits on the controller. The controller is a single replica because it
owns the price and the live settings.
"""

import asyncio
import contextlib
import logging
import math
import os
import random
import time
import uuid
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from online.answers import answers_match, vote
from online.artifact import WarmStart
from online.controller import DualController, SettingError
from online.datasets import load_dataset
from online.features import question_features
from online.history import ControllerHistory
from online.learner import Learner
from online.price_view import PriceView
from online.samples import Question, read_samples
from online.sequential import STOP, SequentialPolicy
from serve.api import (
    ApiError,
    BudgetRequest,
    ChatCompletionRequest,
    ConfigRequest,
    FeedbackRequest,
    SolveRequest,
    StreamRecord,
    check_admin_token,
    error_response,
    json_body_schema,
    parse_body,
)
from serve.dashboard import render_stats_page, stats_format
from serve.ingest import (
    JSON_LINES,
    MSGPACK,
    RecordStreamResponse,
    encode_results,
    error_result,
    media_type_of,
    read_records,
    solve_records,
)
from serve.metrics import GatewayMetrics
from serve.openai_api import chat_completion, model_list
from serve.replay import ReplayBackend
from serve.sampler import BackendError, PoolOverloaded, SampleResult, SamplerPool
from serve.settings import AppSettings, ControllerSettings, ReplaySettings

__all__ = [
    "DualControllerDeployment",
    "Gateway",
    "ReplayDeployment",
    "build_app",
    "compose_app",
]

logger = logging.getLogger(__name__)

CONFIG_KEYS = ("budget", "step_size", "explore")
"""The controller's live settings, which ``user_config`` and ``PUT /v1/config`` change."""

api = FastAPI(title="ttc-allocator", summary="Budgeted test-time compute allocation")


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "internal_error", "internal error; see the service log"))


@serve.deployment(
    name="DualController",
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    # Gateways report every 50 ms; an access-log line per report would flood the log.
    logging_config={"enable_access_log": False},
)
class DualControllerDeployment:
    """Owns the price, the live settings and the cost totals; snapshots them when a path is set.

    ``user_config`` keys: ``budget``, ``step_size`` and ``explore`` (see `CONFIG_KEYS`). A
    ``user_config`` value is applied when it differs from the one applied from ``user_config``
    last, so a replica restarted with an unchanged config keeps the values set through the API
    since then (restored from the snapshot).
    """

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]
        self._settings = ControllerSettings.model_validate(settings)
        warm = WarmStart.load(self._settings.artifact)
        entry = warm.entry(self._settings.policy)
        probes = self._settings.policy != "sequential"
        self._controller = DualController(
            budget=self._settings.budget,
            cost_curve=entry.cost_curve,
            step_size=self._settings.step_size,
            price_scale=entry.price_scale,
            rule=self._settings.rule,
            window=self._settings.window,
            unit=warm.unit,
            min_budget=float(warm.actions.sample_counts[0]),
            explore=self._settings.explore,
            probe_cost=float(warm.actions.max_samples) if probes else None,
        )
        # The values applied from user_config last, by key, and why the last one was rejected.
        self._user_config: dict[str, float] = {}
        self._user_config_error: str | None = None
        self._feedback = {"received": 0, "with_answer": 0, "correct": 0}
        self._dirty = False
        self._restore()
        self._history = ControllerHistory(interval_s=1.0, max_points=3600)
        self._history.start(self._controller.actions_)
        self._saver: asyncio.Task[None] | None = None
        if self._settings.state_path:
            if self._settings.snapshot_interval_s > 0:
                self._saver = asyncio.get_running_loop().create_task(self._save_loop())
        else:
            logger.warning("controller state_path not set: lambda and totals are lost on restart")
        logger.info(
            "controller started: budget %s %s, lambda %.6g, rule %s, step_size %s, explore %s",
            self._controller.budget,
            warm.unit,
            self._controller.lambda_,
            self._controller.rule,
            self._controller.step_size,
            self._controller.explore,
        )

    def _restore(self) -> None:
        path = self._settings.state_path
        if not path:
            return
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            logger.info("no controller snapshot at %s; starting fresh", path)
            return
        extra = self._controller.restore(blob)
        applied = extra.get("user_config")
        if applied is None:
            # Snapshots written before step_size and explore were live settings.
            budget = extra.get("config_budget")
            applied = {} if budget is None else {"budget": budget}
        self._user_config = dict(applied)
        logger.info(
            "controller restored from %s: budget %s, lambda %.6g, step_size %s, explore %s, "
            "%d requests",
            path,
            self._controller.budget,
            self._controller.lambda_,
            self._controller.step_size,
            self._controller.explore,
            self._controller.requests_,
        )

    def _save(self) -> None:
        if self._settings.state_path:
            extra = {"user_config": self._user_config}
            self._controller.save(self._settings.state_path, extra)
            self._dirty = False

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.snapshot_interval_s)
            if self._dirty:
                try:
                    self._save()
                except OSError:
                    logger.exception("controller snapshot to %s failed", self._settings.state_path)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the ``user_config`` values that differ from those it applied last.

        An unknown key or an invalid value applies no value of ``user_config``. The error, which
        names the key and the value, is logged and returned by `get_config` as
        ``user_config_error`` until a valid ``user_config`` arrives.
        """
        # NOTE: raising would fail the deploy, but Serve then replaces this replica with ones that
        # fail the same way. Tried on Ray 2.60 by redeploying the application with serve.run,
        # requests then timed out until the next valid deploy, which started a fresh controller.
        unknown = sorted(set(user_config) - set(CONFIG_KEYS))
        changes = {
            key: value
            for key, value in user_config.items()
            if value is not None and value != self._user_config.get(key)
        }
        error = None
        if unknown:
            error = f"unknown user_config keys {unknown}, allowed: {', '.join(CONFIG_KEYS)}"
        else:
            try:
                self._controller.configure(**changes)
            except SettingError as exc:
                error = f"user_config key {exc.field!r}: {exc}"
        self._user_config_error = error
        if error is not None:
            logger.error("%s. No user_config value was applied; fix it and deploy again", error)
            return
        if changes:
            self._user_config.update({key: float(value) for key, value in changes.items()})
            self._save()

    async def report(
        self,
        finished: list[tuple[float, str]],
        source: str,
        batch: int | None = None,
        learning: dict[str, int] | None = None,
        in_flight: int | None = None,
    ) -> dict[str, Any]:
        """Record an allocator's finished requests; return the state it should adopt.

        An empty report still marks ``source`` as an active allocator. ``batch`` numbers the
        source's reports, so that a copy sent again after a failed reply is dropped.
        ``learning`` contains the source's running totals ``probes`` and ``labels_learned``, and
        ``in_flight`` its requests dispatched and not finished.
        """
        applied = self._controller.report(
            finished, source, batch=batch, learning=learning, in_flight=in_flight
        )
        self._dirty = self._dirty or (applied and bool(finished))
        if self._dirty and self._settings.snapshot_interval_s == 0:
            # Written before the reply: a replica killed after this write has the report, and
            # drops the copy that the gateway sends again because it got no reply.
            try:
                self._save()
            except OSError:
                logger.exception("controller snapshot to %s failed", self._settings.state_path)
        state = self._state()
        self._history.observe(state, self._controller.actions_)
        return state

    def _state(self) -> dict[str, Any]:
        """Return what a gateway adopts: the controller's settings and its moving mean cost."""
        state = self._controller.settings()
        state["window_mean_cost"] = self._controller.window_mean_cost
        return state

    async def settings(self) -> dict[str, Any]:
        return self._state()

    async def get_budget(self) -> dict[str, Any]:
        return {
            "budget": self._controller.budget,
            "lambda": self._controller.lambda_,
            "unit": self._controller.unit,
        }

    async def get_config(self) -> dict[str, Any]:
        return {
            "budget": self._controller.budget,
            "step_size": self._controller.step_size,
            "explore": self._controller.explore,
            "lambda": self._controller.lambda_,
            "unit": self._controller.unit,
            "user_config_error": self._user_config_error,
        }

    async def set_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change any of `CONFIG_KEYS` together.

        An invalid value returns ``{"error": message, "field": key}`` and changes nothing.
        """
        try:
            self._controller.configure(**changes)
        except SettingError as exc:
            return {"error": str(exc), "field": exc.field}
        self._save()
        return await self.get_config()

    async def set_budget(self, budget: float) -> dict[str, Any]:
        """Retarget; an invalid budget returns ``{"error": message}`` and changes nothing."""
        try:
            self._controller.set_budget(budget)
        except ValueError as exc:
            return {"error": str(exc)}
        self._save()
        return await self.get_budget()

    async def record_feedback(self, correct: bool | None) -> None:
        """Count feedback; ``correct`` is None when it carried no answer."""
        self._feedback["received"] += 1
        self._feedback["with_answer"] += int(correct is not None)
        self._feedback["correct"] += int(correct is True)

    async def stats(self) -> dict[str, Any]:
        out = self._controller.stats()
        out["feedback"] = dict(self._feedback)
        return out

    async def history(self) -> list[dict[str, Any]]:
        """Return the points of `ControllerHistory`, oldest first (one per second at most)."""
        return self._history.points()


@serve.deployment(name="ReplayBackend", num_replicas=1, ray_actor_options={"num_cpus": 0})
class ReplayDeployment:
    """Runs the replay server (aiohttp) on its own port inside a replica."""

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]
        s = ReplaySettings.model_validate(settings)
        questions: list[Question] = []
        for name in s.datasets:
            questions.extend(load_dataset(name))
        for path in s.samples:
            questions.extend(read_samples(path))
        self._backend = ReplayBackend(
            questions,
            seed=s.seed,
            latency_ms=s.latency_ms,
            latency_per_sample_ms=s.latency_per_sample_ms,
            faults=s.faults,
            honours_n=s.honours_n,
        )
        await self._backend.start(s.host, s.port)

    async def ready(self) -> str:
        return self._backend.url

    async def __del__(self) -> None:
        await self._backend.stop()

    async def stats(self) -> dict[str, Any]:
        return self._backend.stats()


def _backend_error(exc: BackendError) -> ApiError:
    """Map a failed backend request to the client's error; ``cost`` is what it was billed."""
    cost = float(exc.billed_samples)
    retry_after_s = math.ceil(exc.retry_after_s or 1)
    if isinstance(exc, PoolOverloaded):
        message = f"the service is overloaded, retry later: {exc}"
        return ApiError(503, "overloaded", message, retry_after_s, cost)
    if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
        message = f"the LLM backend rejected the question: {exc}"
        return ApiError(422, "backend_rejected", message, cost=cost)
    if exc.status == 429:
        message = f"the LLM backend is overloaded: {exc}"
        return ApiError(503, "backend_overloaded", message, retry_after_s, cost)
    return ApiError(502, "backend_error", f"the LLM backend failed: {exc}", cost=cost)


@dataclass
class _Remembered:
    """Features, voted answer and sample keys of a finished request, kept for feedback.

    ``learned`` is whether the policy has already trained on the request (a probe, or earlier
    feedback with an answer), so that one request never trains it twice.
    """

    features: dict[str, float]
    answer: str | None
    keys: list[str | None]
    lambda_: float
    learned: bool = False


_STREAM_RETRY_FIRST_S = 0.05
"""First wait of a stream record that the worker pool turned away as overloaded."""
_STREAM_RETRY_LONGEST_S = 2.0
"""Maximum wait between two tries of such a record."""

_STREAM_BODY = {
    "requestBody": {
        "required": True,
        "description": "one record per line (JSON Lines) or per msgpack map",
        "content": {
            media_type: {"schema": StreamRecord.model_json_schema()}
            for media_type in (JSON_LINES, MSGPACK)
        },
    }
}


def _replica_rank() -> int:
    """Return this replica's rank in its deployment, or 0 where Ray Serve gives none."""
    rank = getattr(serve.get_replica_context(), "rank", None)
    # Ray 2.60 gives a ReplicaRank object, whose ``rank`` is the number.
    rank = getattr(rank, "rank", rank)
    return rank if isinstance(rank, int) else 0


# Beyond max_ongoing_requests per replica, Serve queues up to max_queued_requests and rejects
# the rest with 503 and Retry-After, so overload is answered at once instead of piling up.
@serve.deployment(
    name="Gateway",
    max_ongoing_requests=256,
    max_queued_requests=512,
    backpressure_config=BackpressureConfig(retry_after_s=1),
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress(api)
class Gateway:
    """HTTP ingress: validation, the policy's decision, sampling, voting and cost reporting."""

    async def __init__(  # type: ignore[misc]
        self,
        controller: DeploymentHandle,
        replay: DeploymentHandle | None,
        settings: dict[str, Any],
    ) -> None:
        self._settings = AppSettings.model_validate(settings)
        self._controller = controller
        self._warm = WarmStart.load(self._settings.controller.artifact)
        entry = self._warm.entry(self._settings.controller.policy)
        self._policy = entry.policy
        self._cost_curve = entry.cost_curve
        # NOTE: the sequential policy does not learn from feedback; feedback is still counted.
        self._learner = None
        if not isinstance(self._policy, SequentialPolicy):
            self._learner = Learner(self._policy)
        self._actions = self._warm.actions
        self._probe_draws = np.random.default_rng([self._settings.explore_seed, _replica_rank()])
        self._probes = 0
        self._memory: OrderedDict[str, _Remembered] = OrderedDict()
        if replay is not None:
            url = await replay.ready.remote()
            logger.info("replay backend ready at %s", url)
        self._pool = SamplerPool(self._settings.backend)
        await self._pool.start()
        self._admin_token = os.environ.get(self._settings.admin_token_env) or None
        if self._admin_token is None:
            logger.warning(
                "%s is not set: any client can change the budget",
                self._settings.admin_token_env,
            )
        self._source = uuid.uuid4().hex[:12]
        self._started = int(time.time())
        self._metrics = GatewayMetrics()
        state = await controller.settings.remote()
        # Starting from explore 0, `_adopt` logs the controller's rate as a change.
        self._price = PriceView({**state, "explore": 0.0})
        self._adopt(state)
        self._flush_now = asyncio.Event()
        # Solves of streams whose client went away, kept referenced until they finish.
        self._detached: set[asyncio.Task[Any]] = set()
        self._render_lock = asyncio.Lock()
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    async def __del__(self) -> None:
        self._reporter.cancel()
        try:
            await self._flush()
        except Exception:
            logger.exception("final report to the controller failed at shutdown")
        await self._pool.close()

    async def _flush(self) -> None:
        """Send the finished requests to the controller and adopt its price and budget."""
        # A batch that fails (the controller may be restarting) is sent again unchanged, and the
        # controller drops a copy it has already applied.
        batch, report = self._price.next_batch()
        learning = {
            "probes": self._probes,
            "labels_learned": self._learner.labels_ if self._learner is not None else 0,
        }
        state = await self._controller.report.remote(
            report, self._source, batch, learning, self._price.in_flight
        )
        self._price.acknowledge(batch)
        self._adopt(state)

    def _adopt(self, state: dict[str, Any]) -> None:
        """Take the controller's price, budget, step size and exploration rate."""
        explore = self._price.explore
        self._price.publish(state)
        self._metrics.set_price(self._price.budget, self._price.price())
        self._metrics.set_moving_cost(state["window_mean_cost"])
        if self._price.explore == explore:
            return
        logger.info("explore changed from %s to %s", explore, self._price.explore)
        if self._price.explore > 0 and not self._settings.learn_from_feedback:
            logger.warning(
                "explore is %s but learn_from_feedback is off: probes are billed and train nothing",
                self._price.explore,
            )

    async def _report_loop(self) -> None:
        """Report at least every ``report_interval_s``, sooner when a batch is full."""
        interval = self._settings.report_interval_s
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), timeout=interval)
            self._flush_now.clear()
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("report to the controller failed; retrying in %s s", interval)
                await asyncio.sleep(interval)

    @api.post("/v1/solve", openapi_extra=json_body_schema(SolveRequest))
    async def solve(self, request: Request) -> JSONResponse:
        body = await parse_body(request, SolveRequest)
        request_id = body.id or uuid.uuid4().hex
        solved = await self._solve("solve", body.question, request_id, body.metadata)
        return JSONResponse(solved)

    @api.post("/v1/chat/completions", openapi_extra=json_body_schema(ChatCompletionRequest))
    async def chat_completions(self, request: Request) -> JSONResponse:
        body = await parse_body(request, ChatCompletionRequest)
        question = body.question()
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        solved = await self._solve("chat", question, request_id, body.metadata)
        return JSONResponse(chat_completion(solved, created))

    @api.post("/v1/stream", openapi_extra=_STREAM_BODY, response_class=RecordStreamResponse)
    async def stream(self, request: Request) -> RecordStreamResponse:
        media_type = media_type_of(request.headers.get("content-type"))
        # NOTE: Ray Serve 2.60's proxy reads the whole body and queues the response without
        # waiting for the client, so the bounds of solve_records hold in this replica only. A
        # fast uploader or a slow reader grows the proxy's queues instead.
        records = read_records(request.stream(), media_type)
        results = solve_records(
            records,
            self._solve_record,
            self._settings.stream_concurrency,
            self._settings.stream_max_records,
            self._detached,
        )
        return RecordStreamResponse(encode_results(results, media_type), media_type=media_type)

    async def _solve_record(self, record: StreamRecord, line: int) -> dict[str, Any]:
        """Return a stream record's result: a ``/v1/solve`` body with ``line``, or its error.

        A record that the worker pool turns away as ``overloaded`` was sent nowhere and billed
        nothing, so it waits and tries again, with doubling jittered delays, until
        ``backend.deadline_s`` has passed. The stream then slows down instead of failing
        records while other traffic fills the pool.
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._settings.backend.deadline_s
        delay_s = _STREAM_RETRY_FIRST_S
        while True:
            try:
                solved = await self._solve("stream", record.question, record.id, record.metadata)
            except ApiError as exc:
                wait_s = delay_s * random.uniform(0.5, 1.5)
                if exc.kind != "overloaded" or loop.time() + wait_s > give_up_at:
                    return error_result(record.id, line, exc)
                logger.debug(
                    "stream record %s (line %d) waits %.2f s: %s", record.id, line, wait_s, exc
                )
                await asyncio.sleep(wait_s)
                delay_s = min(2 * delay_s, _STREAM_RETRY_LONGEST_S)
                continue
            except Exception:
                logger.exception("stream record %s (line %d) failed", record.id, line)
                error = ApiError(500, "internal_error", "internal error; see the service log")
                return error_result(record.id, line, error)
            solved["line"] = line
            return solved

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        return JSONResponse(model_list(self._started))

    async def _solve(
        self, route: str, question: str, request_id: str, metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Solve one question and record the metrics of ``route`` (``solve``, ``chat``, ``stream``).

        Returns the body of a ``/v1/solve`` reply; raises `ApiError` when the backend fails.
        """
        started = time.perf_counter()
        try:
            solved = await self._decide_and_sample(route, question, request_id, metadata)
        except ApiError as exc:
            latency_ms = (time.perf_counter() - started) * 1000
            self._metrics.record_backend_error(route, exc.kind, latency_ms)
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        money = self._settings.backend.money(**solved["usage"])
        if money is not None:
            solved["money"] = money
        self._metrics.record_request(
            route, solved["action"]["name"], solved["cost"], latency_ms, money, solved["probe"]
        )
        self._metrics.set_price(self._price.budget, self._price.price())
        return solved

    async def _sample(self, route: str, question: str, n: int, seed: int | None) -> SampleResult:
        """Draw and vote through the worker pool, counting the retries its calls made."""
        try:
            result = await self._pool.sample(question, n, seed=seed)
        except BackendError as exc:
            self._metrics.record_retries(route, exc.retries)
            raise
        self._metrics.record_retries(route, result.retries)
        return result

    async def _decide_and_sample(
        self, route: str, question: str, request_id: str, metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Decide the action at the price, reserve its cost, sample, vote and record the cost."""
        features = question_features(question, metadata)
        decided_at = self._price.price()
        seed = zlib.crc32(request_id.encode()) if self._settings.seed_from_id else None
        if isinstance(self._policy, SequentialPolicy):
            return await self._solve_in_rounds(
                route, question, request_id, features, decided_at, seed
            )
        explore = self._price.explore
        probe = explore > 0 and bool(self._probe_draws.random() < explore)
        if probe:
            action = self._actions[len(self._actions) - 1]
        else:
            action = self._actions[self._policy.decide_one(features, decided_at)]

        ticket = self._price.reserve(float(action.samples))
        try:
            result = await self._sample(route, question, action.samples, seed)
        except BackendError as exc:
            # The backend's message may echo the question, so it is logged at DEBUG only.
            logger.warning("request %s failed at the backend, status %s", request_id, exc.status)
            logger.debug("request %s backend error: %s", request_id, exc)
            self._settle_failure(ticket, exc.billed_samples, action.name)
            raise _backend_error(exc) from None

        cost = float(result.billed_samples)
        self._bill(ticket, cost, action.name)
        learned = False
        if probe:
            self._probes += 1
            learner = self._training_learner()
            if learner is not None:
                learned = bool(learner.learn_from_probe(features, result.keys, decided_at))
        remembered = _Remembered(features, result.answer, result.keys, decided_at, learned)
        self._remember(request_id, remembered)
        logger.debug(
            "request %s: %s, probe %s, cost %s, answer %s",
            request_id,
            action.name,
            probe,
            cost,
            result.answer,
        )
        return {
            "id": request_id,
            "answer": result.answer,
            "action": {"name": action.name, "samples": action.samples},
            "samples_used": result.samples_used,
            "cost": cost,
            "lambda": decided_at,
            "votes": result.votes,
            "text": result.text,
            "rounds": 1,
            "probe": probe,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            },
        }

    async def _solve_in_rounds(
        self,
        route: str,
        question: str,
        request_id: str,
        features: dict[str, float],
        decided_at: float,
        seed: int | None,
    ) -> dict[str, Any]:
        """Draw up to the sequential policy's rungs, one backend call per round, then vote.

        Every round is decided at the price the request started with. The cost is every sample
        billed, retries and failed rounds included. A backend failure after the first round
        ends the request with a vote on the samples that came back.
        """
        assert isinstance(self._policy, SequentialPolicy)
        policy = self._policy
        ticket = self._price.reserve(self._cost_curve.cost_at(decided_at))
        rung = policy.first_rung(features, decided_at)
        rounds: list[SampleResult] = []
        keys: list[str | None] = []
        billed = 0
        while True:
            requested = policy.rungs_[rung] - len(keys)
            round_seed = None if seed is None else (seed + len(rounds)) & 0xFFFFFFFF
            try:
                result = await self._sample(route, question, requested, round_seed)
            except BackendError as exc:
                billed += exc.billed_samples
                logger.warning(
                    "request %s failed at the backend in round %d, status %s",
                    request_id,
                    len(rounds) + 1,
                    exc.status,
                )
                logger.debug("request %s backend error: %s", request_id, exc)
                if rounds:
                    break  # vote on the samples of the rounds that came back
                self._settle_failure(ticket, billed, f"draw@{billed}")
                raise _backend_error(exc) from None
            rounds.append(result)
            keys.extend(result.keys)
            billed += result.billed_samples
            if result.samples_used < requested:
                break
            following = policy.next_rung(features, rung, keys, decided_at)
            if following == STOP:
                break
            rung = following

        texts = [text for r in rounds for text in r.texts]
        voted = vote(keys)
        drawn = len(keys)
        name = f"vote@{drawn}" if drawn in self._actions.sample_counts else f"draw@{drawn}"
        cost = float(billed)
        self._bill(ticket, cost, name)
        self._remember(request_id, _Remembered(features, voted.answer, keys, decided_at))
        return {
            "id": request_id,
            "answer": voted.answer,
            "action": {"name": name, "samples": drawn},
            "samples_used": drawn,
            "cost": cost,
            "lambda": decided_at,
            "votes": voted.counts,
            "text": texts[voted.index] if voted.index is not None else None,
            "rounds": len(rounds),
            "probe": False,
            "usage": {
                "prompt_tokens": sum(r.prompt_tokens for r in rounds),
                "completion_tokens": sum(r.completion_tokens for r in rounds),
            },
        }

    def _bill(self, ticket: int, cost: float, action: str) -> None:
        """Record a finished request's billed cost, and report at once when a batch is full."""
        # NOTE: the controller's budget is in samples even when backend token prices are set, so
        # `money` is reported but not steered. A money budget would pass the request's money
        # here and need the policy's cost curve and the action costs in money as well.
        self._price.complete(ticket, cost, action)
        if self._price.unreported >= self._settings.report_batch:
            self._flush_now.set()

    def _settle_failure(self, ticket: int, billed: int, action: str) -> None:
        """Record what a failed request was billed, or withdraw its reservation if nothing."""
        if billed:
            self._price.complete(ticket, float(billed), action)
        else:
            # Nothing was billed, so the reservation is withdrawn, not completed at cost 0.
            self._price.cancel(ticket)

    def _training_learner(self) -> Learner | None:
        """Return the learner when this gateway trains the policy on probes and feedback."""
        return self._learner if self._settings.learn_from_feedback else None

    def _remember(self, request_id: str, entry: _Remembered) -> None:
        if self._settings.feedback_memory == 0:
            return
        self._memory[request_id] = entry
        self._memory.move_to_end(request_id)
        while len(self._memory) > self._settings.feedback_memory:
            self._memory.popitem(last=False)

    @api.post("/v1/feedback", status_code=202, openapi_extra=json_body_schema(FeedbackRequest))
    async def feedback(self, request: Request) -> JSONResponse:
        body = await parse_body(request, FeedbackRequest)
        entry = self._memory.get(body.id)
        if entry is None:
            raise ApiError(
                404,
                "not_found",
                f"field 'id': no recent request with id {body.id!r} on this replica",
            )
        correct: bool | None = None
        learned = False
        if body.correct_answer is not None:
            correct = answers_match(entry.answer, body.correct_answer)
            learner = self._training_learner()
            if learner is not None and not entry.learned:
                labels = learner.learn_from_gold(
                    entry.features, entry.keys, body.correct_answer, entry.lambda_
                )
                # Samples without any readable answer give no labels and train nothing.
                entry.learned = learned = bool(labels)
        await self._controller.record_feedback.remote(correct)
        reply = {"id": body.id, "accepted": True, "correct": correct, "learned": learned}
        return JSONResponse(reply, status_code=202)

    @api.get("/v1/budget")
    async def get_budget(self) -> JSONResponse:
        return JSONResponse(await self._controller.get_budget.remote())

    @api.put("/v1/budget", openapi_extra=json_body_schema(BudgetRequest))
    async def put_budget(self, request: Request) -> JSONResponse:
        check_admin_token(request, self._admin_token)
        body = await parse_body(request, BudgetRequest)
        state = await self._controller.set_budget.remote(body.budget)
        if "error" in state:
            raise ApiError(422, "invalid_request", f"field 'budget': {state['error']}")
        self._adopt(await self._controller.settings.remote())
        return JSONResponse(state)

    @api.get("/v1/config")
    async def get_config(self) -> JSONResponse:
        return JSONResponse(await self._controller.get_config.remote())

    @api.put("/v1/config", openapi_extra=json_body_schema(ConfigRequest))
    async def put_config(self, request: Request) -> JSONResponse:
        check_admin_token(request, self._admin_token)
        body = await parse_body(request, ConfigRequest)
        state = await self._controller.set_config.remote(body.changes())
        if "error" in state:
            raise ApiError(422, "invalid_request", f"field '{state['field']}': {state['error']}")
        self._adopt(await self._controller.settings.remote())
        return JSONResponse(state)

    @api.get("/v1/stats", response_model=None)
    async def stats(
        self,
        request: Request,
        format_: str | None = Query(
            None,
            alias="format",
            description="'json' or 'html'; without it a browser's Accept header gets HTML",
        ),
    ) -> JSONResponse | HTMLResponse:
        chosen = stats_format(format_, request.headers.get("accept"))
        stats = await self._controller.stats.remote()
        headers = {"Vary": "Accept"}
        if chosen == "json":
            return JSONResponse(stats, headers=headers)
        history = await self._controller.history.remote()
        # One render at a time per replica, in a thread, so that the event loop keeps serving.
        async with self._render_lock:
            page = await asyncio.to_thread(render_stats_page, stats, history)
        logger.debug("stats page with %d points rendered in %.1f ms", len(history), page.render_ms)
        headers["Cache-Control"] = "no-store"
        headers["Server-Timing"] = f"render;dur={page.render_ms:.1f}"
        return HTMLResponse(page.html, headers=headers)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse({"status": "ok"})


def build_app(args: dict[str, Any]) -> Application:
    """Build the application from the ``args`` of a Serve config (see `AppSettings`)."""
    return compose_app(AppSettings.model_validate(args or {}))


def compose_app(
    settings: AppSettings,
    controller_user_config: dict[str, Any] | None = None,
    gateway_options: dict[str, Any] | None = None,
) -> Application:
    """Bind the deployments; ``controller_user_config`` is what a Serve config's
    ``deployments[].user_config`` would set on the controller, and ``gateway_options`` are
    deployment options of the gateway (such as ``max_queued_requests``)."""
    # The deployment decorator returns a Deployment, which mypy cannot see through.
    controller_deployment: Any = DualControllerDeployment
    replay_deployment: Any = ReplayDeployment
    gateway_deployment: Any = Gateway
    if controller_user_config is not None:
        controller_deployment = controller_deployment.options(user_config=controller_user_config)
    if gateway_options is not None:
        gateway_deployment = gateway_deployment.options(**gateway_options)
    controller = controller_deployment.bind(settings.controller.model_dump())
    replay = (
        replay_deployment.bind(settings.replay.model_dump()) if settings.replay.enabled else None
    )
    app: Application = gateway_deployment.bind(controller, replay, settings.model_dump())
    return app
