"""Simulator: budget held, retarget convergence, outputs and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from online.__main__ import main
from online.datasets import load_dataset
from online.samples import Question, Sample, read_samples, write_samples
from online.simulator import QuestionPool, Retarget, SimulationConfig, simulate
from online.trace import converged_after, moving_mean

CONTRACT_FIELDS = {
    "budget",
    "mean_cost",
    "accuracy",
    "uniform_accuracy",
    "oracle_accuracy",
    "requests",
    "policy",
    "explore",
    "lambda_final",
    "actions",
    "pseudo_label_agreement",
}


@pytest.fixture(scope="module")
def svamp() -> QuestionPool:
    return QuestionPool("svamp", load_dataset("svamp"))


@pytest.fixture(scope="module")
def math100() -> QuestionPool:
    return QuestionPool("math100", load_dataset("math100"))


@pytest.fixture
def small_samples(tmp_path: Path) -> Path:
    """Twelve questions of 15 samples each, from unanimous to split between two answers."""
    questions = []
    for i in range(12):
        wrong = i % 6
        answers = [str(i)] * (15 - wrong) + [str(i + 100)] * wrong
        questions.append(
            Question(
                id=f"q{i}",
                question=f"Ann has {i} apples and buys {i + 2} more. How many apples now?",
                gold=str(i),
                samples=tuple(Sample(answer=a) for a in answers),
            )
        )
    path = tmp_path / "small.jsonl"
    write_samples(questions, path)
    return path


def test_budget_held_on_svamp(svamp: QuestionPool) -> None:
    result = simulate(svamp, SimulationConfig(budget=3.0, requests=10_000))
    summary = result.summary
    assert summary["mean_cost"] == pytest.approx(3.0, rel=0.01)
    assert summary["requests"] == 10_000
    assert sum(summary["actions"].values()) == 10_000
    assert summary["oracle_accuracy"] >= summary["uniform_accuracy"]


def test_retarget_converges_quickly(svamp: QuestionPool) -> None:
    config = SimulationConfig(budget=4.0, requests=10_000, retarget=Retarget(at=5_000, budget=2.0))
    summary = simulate(svamp, config).summary
    converged = summary["retarget"]["converged_after"]
    assert converged is not None
    assert converged <= 1_000
    assert summary["mean_cost_before"] == pytest.approx(4.0, rel=0.01)
    assert summary["mean_cost_after"] == pytest.approx(2.0, rel=0.02)
    assert [s["budget"] for s in summary["segments"]] == [4.0, 2.0]


def test_math100_never_over_budget(math100: QuestionPool) -> None:
    result = simulate(math100, SimulationConfig(budget=3.0, requests=10_000))
    costs = result.trace.costs
    running_mean = np.cumsum(costs) / np.arange(1, costs.size + 1)
    assert result.summary["mean_cost"] <= 3.0 * 1.01
    # After a first thousand requests, the running mean stays within 1% of the budget too.
    assert running_mean[1_000:].max() <= 3.0 * 1.01


def test_budget_holds_across_pool_switch(svamp: QuestionPool, math100: QuestionPool) -> None:
    config = SimulationConfig(budget=3.0, requests=6_000)
    summary = simulate(svamp, config, then=math100).summary
    assert summary["switch"] == {"at": 3_000, "pool": "math100"}
    first, second = summary["segments"]
    assert (first["pool"], second["pool"]) == ("svamp", "math100")
    assert first["mean_cost"] == pytest.approx(3.0, rel=0.01)
    assert second["mean_cost"] == pytest.approx(3.0, rel=0.02)


def test_summary_has_contract_fields(small_samples: Path, tmp_path: Path) -> None:
    pool = QuestionPool("small", read_samples(small_samples))
    config = SimulationConfig(
        budget=4.0, requests=800, retarget=Retarget(at=400, budget=2.0), explore=0.1, seed=3
    )
    result = simulate(pool, config)
    summary_path, trace_path = result.save(tmp_path / "out")
    summary = json.loads(summary_path.read_text())
    assert set(summary) >= CONTRACT_FIELDS | {"retarget", "mean_cost_before", "mean_cost_after"}
    assert set(summary["retarget"]) == {"at", "budget", "converged_after"}
    assert summary["retarget"]["at"] == 400
    assert summary["probes"] > 0
    assert 0.0 <= summary["pseudo_label_agreement"] <= 1.0
    assert trace_path.read_bytes().startswith(b"\x89PNG")


def test_no_probes_gives_null_agreement(small_samples: Path) -> None:
    pool = QuestionPool("small", read_samples(small_samples))
    summary = simulate(pool, SimulationConfig(budget=3.0, requests=200)).summary
    assert summary["probes"] == 0
    assert summary["pseudo_label_agreement"] is None
    assert "retarget" not in summary


def test_same_seed_same_run(small_samples: Path) -> None:
    pool = QuestionPool("small", read_samples(small_samples))
    config = SimulationConfig(budget=3.0, requests=300, explore=0.05, feedback=0.1, seed=7)
    first, second = simulate(pool, config), simulate(pool, config)
    assert first.summary == second.summary
    assert np.array_equal(first.trace.costs, second.trace.costs)


def test_uniform_policy_holds_budget(small_samples: Path) -> None:
    pool = QuestionPool("small", read_samples(small_samples))
    summary = simulate(pool, SimulationConfig(budget=4.0, requests=3_000, policy="uniform")).summary
    assert summary["policy"] == "uniform"
    assert summary["mean_cost"] == pytest.approx(4.0, rel=0.01)
    # The uniform policy mixes the two actions whose costs bracket the budget.
    assert set(summary["actions"]) == {"vote@3", "vote@5"}


def test_imitation_policy_runs(small_samples: Path) -> None:
    pool = QuestionPool("small", read_samples(small_samples))
    summary = simulate(pool, SimulationConfig(budget=3.0, requests=200, policy="imitation")).summary
    assert summary["policy"] == "imitation"
    assert sum(summary["actions"].values()) == 200


def test_budget_below_cheapest_action_rejected(small_samples: Path) -> None:
    pool = QuestionPool("small", read_samples(small_samples))
    with pytest.raises(ValueError, match=r"budget must be at least 1 samples.*got 0\.5"):
        simulate(pool, SimulationConfig(budget=0.5, requests=10))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="explore must be a rate in"):
        SimulationConfig(budget=3.0, requests=10, explore=1.5)
    with pytest.raises(
        ValueError, match="policy must be one of value, imitation, sequential, uniform, got 'x'"
    ):
        SimulationConfig(budget=3.0, requests=10, policy="x")
    with pytest.raises(ValueError, match=r"retarget request must be in 1\.\.9, got 10"):
        SimulationConfig(budget=3.0, requests=10, retarget=Retarget(10, 2.0))


def test_moving_mean_and_convergence() -> None:
    costs = np.array([4.0] * 10 + [2.0] * 10)
    assert moving_mean(costs, 4)[-1] == 2.0
    assert converged_after(costs, start=10, budget=2.0, window=4) == 3
    assert converged_after(costs, start=10, budget=3.0, window=4) is None


def test_cli_writes_summary_and_trace(small_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "online",
        "simulate",
        "--samples",
        str(small_samples),
        "--budget",
        "3",
        "--requests",
        "300",
        "--retarget",
        "150:2",
        "--no-progress",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= CONTRACT_FIELDS
    assert summary["requests"] == 300
    assert json.loads(done.stdout) == summary
    assert (out / "trace.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["--dataset", "svamp", "--budget", "0"], "--budget", "'0'"),
        (["--dataset", "svamp", "--requests", "-5"], "--requests", "'-5'"),
        (["--dataset", "svamp", "--retarget", "5000"], "--retarget", "'5000'"),
        (["--dataset", "svamp", "--retarget", "a:2"], "--retarget", "'a:2'"),
        (["--dataset", "svamp", "--retarget", "20000:2"], "--retarget", "20000"),
        (["--dataset", "svamp", "--policy", "oracle"], "--policy", "'oracle'"),
        (["--dataset", "nosuch"], "--dataset", "'nosuch'"),
        (["--dataset", "gsm8k"], "--dataset", "'gsm8k'"),
        (["--dataset", "svamp", "--explore", "2"], "--explore", "'2'"),
    ],
)
def test_cli_rejects_bad_arguments(
    args: list[str], option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    defaults = {"--budget": "3", "--requests": "10000"}
    for name, default in defaults.items():
        if name not in args:
            args = [*args, name, default]
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", *args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"argument {option}" in message
    assert value in message


def test_cli_reports_missing_samples_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    args = ["--samples", str(missing), "--budget", "3", "--requests", "10"]
    status = main(["simulate", *args, "--out", str(tmp_path / "out")])
    assert status == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_sequential_policy_holds_budget_and_beats_uniform(svamp: QuestionPool) -> None:
    summary = simulate(
        svamp, SimulationConfig(budget=3.0, requests=10_000, policy="sequential")
    ).summary
    assert summary["policy"] == "sequential"
    assert summary["mean_cost"] == pytest.approx(3.0, rel=0.01)
    assert summary["accuracy"] > summary["uniform_accuracy"] + 0.01
    # Requests end at any sample count, not only at the actions' counts.
    assert any(name.startswith("draw@") for name in summary["actions"])


def test_sequential_policy_follows_a_retarget(svamp: QuestionPool) -> None:
    config = SimulationConfig(
        budget=4.0, requests=6_000, policy="sequential", retarget=Retarget(3_000, 2.0)
    )
    summary = simulate(svamp, config).summary
    assert summary["mean_cost_before"] == pytest.approx(4.0, rel=0.02)
    assert summary["mean_cost_after"] == pytest.approx(2.0, rel=0.02)
