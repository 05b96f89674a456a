"""Offline evaluation: matched spend, the regret bound, reports, and a samples file it never saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from offline.evaluate import METHODS, EvaluationSettings, evaluate
from online.datasets import load_dataset
from online.samples import Question, Sample, read_samples, write_samples

pytestmark = pytest.mark.timeout(600)

FAST = EvaluationSettings(folds=3, inner_folds=2, value_epochs=5, classifier_iterations=20)


def synthetic_questions(n: int = 240, seed: int = 11) -> list[Question]:
    """A samples file from a made-up model: longer questions with more numbers are harder.

    Each question has a hidden difficulty; the right answer's share of 12 samples falls with
    it, and the wrong samples spread over three distractors.
    """
    rng = np.random.default_rng(seed)
    words = ["apples", "trains", "boxes", "coins", "marbles", "pages", "tickets", "birds"]
    out = []
    for i in range(n):
        numbers = int(rng.integers(1, 7))
        filler = int(rng.integers(3, 30))
        difficulty = 0.12 * numbers + 0.015 * filler + rng.normal(0, 0.15)
        share = float(np.clip(0.95 - difficulty, 0.15, 0.97))
        text = " ".join(
            [f"{rng.choice(words)} {int(rng.integers(2, 90))}" for _ in range(numbers)]
            + [str(rng.choice(words)) for _ in range(filler)]
        )
        gold = str(100 + i)
        samples = []
        for _ in range(12):
            if rng.random() < share:
                samples.append(Sample(gold))
            elif rng.random() < 0.1:
                samples.append(Sample(None))
            else:
                samples.append(Sample(str(int(rng.integers(1, 4)))))
        out.append(Question(f"syn-{i:04d}", f"{text}. How many in all?", gold, tuple(samples)))
    return out


@pytest.fixture(scope="module")
def svamp_reports() -> dict:
    return evaluate(load_dataset("svamp")[:300], [3.0], FAST)


def test_oracle_spends_budget(svamp_reports: dict) -> None:
    oracle = svamp_reports[3.0]["methods"]["oracle"]
    assert oracle["mean_cost"] == pytest.approx(3.0, rel=0.005)


# Policies that fix the number of samples before drawing any: the oracle bounds them.
BEFORE_SAMPLING = ("uniform", "heuristic", "learned", "learned-value")


def test_oracle_is_most_accurate(svamp_reports: dict) -> None:
    methods = svamp_reports[3.0]["methods"]
    for name in BEFORE_SAMPLING:
        assert methods["oracle"]["accuracy"] >= methods[name]["accuracy"] - 1e-12, name


def test_sequential_spends_budget_and_beats_learned(svamp_reports: dict) -> None:
    report = svamp_reports[3.0]
    methods = report["methods"]
    assert methods["sequential"]["mean_cost"] == pytest.approx(3.0, rel=1e-6)
    for name in ("uniform", "learned", "learned-value"):
        assert methods["sequential"]["accuracy"] > methods[name]["accuracy"] + 0.005, name
    assert 1.0 <= report["rounds"]["sequential"] <= 15.0
    assert report["sequential_cost_with_training_price"] == pytest.approx(3.0, rel=0.1)


def test_learned_beats_uniform_on_svamp() -> None:
    """The published svamp figure at budget 3, with the command's default settings."""
    report = evaluate(load_dataset("svamp"), [3.0])[3.0]
    methods = report["methods"]
    assert methods["oracle"]["mean_cost"] == pytest.approx(3.0, rel=0.005)
    for name in ("learned", "learned-value"):
        assert methods[name]["mean_cost"] == pytest.approx(3.0, rel=0.02), name
        assert methods[name]["accuracy"] > methods["uniform"]["accuracy"], name
    for name in BEFORE_SAMPLING:
        assert methods["oracle"]["accuracy"] > methods[name]["accuracy"], name
    assert report["regret"] <= report["regret_bound"]


def test_regret_bound_holds(svamp_reports: dict) -> None:
    report = svamp_reports[3.0]
    assert report["regret"] >= -1e-12
    assert report["regret"] <= report["regret_bound"] + 1e-12


def test_report_has_contract_fields(svamp_reports: dict) -> None:
    report = svamp_reports[3.0]
    for key in ("budget", "unit", "actions", "n_train", "n_test", "folds", "methods"):
        assert key in report
    for key in ("imitation_accuracy", "regret", "regret_bound"):
        assert 0.0 <= report[key] <= 1.0 or key == "regret"
    for name in METHODS:
        assert {"accuracy", "accuracy_std", "mean_cost"} <= set(report["methods"][name])


def test_unseen_samples_file_policies_hold() -> None:
    reports = evaluate(synthetic_questions(), [3.0, 5.0], FAST)
    for budget, report in reports.items():
        methods = report["methods"]
        for name in (*BEFORE_SAMPLING, "oracle", "sequential"):
            assert methods[name]["mean_cost"] == pytest.approx(budget, rel=0.02), (budget, name)
        uniform = methods["uniform"]["accuracy"]
        for name in ("learned", "learned-value"):
            assert methods[name]["accuracy"] >= uniform - 0.01, (budget, name)
        # Here difficulty follows the text closely, so the classifier does well. The sequential
        # policy, which counts the votes so far, still beats spending the same everywhere.
        assert methods["sequential"]["accuracy"] > uniform, budget
        assert report["regret"] <= report["regret_bound"] + 1e-12


def test_too_few_questions_rejected() -> None:
    with pytest.raises(ValueError, match="need at least"):
        evaluate(synthetic_questions(n=8), [3.0], FAST)


def test_budget_below_cheapest_rejected() -> None:
    with pytest.raises(ValueError, match="budget must exceed"):
        evaluate(synthetic_questions(n=40), [1.0], FAST)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offline", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_writes_report_files(tmp_path: Path) -> None:
    samples = tmp_path / "mine.jsonl"
    questions = synthetic_questions(n=60)
    write_samples(questions[:-1], samples)
    # A question with fewer samples than the largest action, and an unknown field.
    with samples.open("a") as fh:
        row = questions[-1].to_json()
        row["samples"] = row["samples"][:4]
        row["extra"] = {"ignored": True}
        fh.write(json.dumps(row) + "\n")
    out = tmp_path / "report"
    result = run_cli(
        "evaluate",
        "--samples",
        str(samples),
        "--budget",
        "3",
        "--out",
        str(out),
        "--folds",
        "3",
        "--curve-budgets",
        "2",
        "4",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["budget"] == 3.0
    assert [point["budget"] for point in report["curve"]] == [2.0, 3.0, 4.0]
    markdown = (out / "report.md").read_text()
    assert "| learned-value |" in markdown
    assert "| sequential |" in markdown
    # Every synthetic question has 12 samples, the last one 4.
    assert report["capped_questions"] == 60
    assert report["fewest_samples"] == 4
    assert "60 questions have fewer than 15 samples (the fewest: 4)" in markdown
    # Early stopping has no budget, so the curve table gives its cost beside its accuracy.
    early = report["curve"][0]["mean_cost"]["early-stop"]
    assert f"({early:.2f})" in markdown
    assert (out / "budget_curve.png").stat().st_size > 1000


def test_cli_reports_malformed_line(tmp_path: Path) -> None:
    samples = tmp_path / "bad.jsonl"
    write_samples(synthetic_questions(n=5), samples)
    with samples.open("a") as fh:
        fh.write('{"id": "x", "question": "q", "samples": "oops"}\n')
    result = run_cli("evaluate", "--samples", str(samples), "--budget", "3", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "bad.jsonl:6" in result.stderr
    assert "samples" in result.stderr


@pytest.mark.parametrize("guard", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("budget", [2.0, 4.0, 7.0])
def test_price_rule_spends_budget_for_classifier_scores(guard: float, budget: float) -> None:
    from offline.learners import class_curves, guarded_scores
    from offline.pricing import PriceRule

    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(5) * 0.5, size=200)
    accuracy = np.sort(rng.uniform(size=(300, 5)), axis=1)
    curves = class_curves(rng.integers(0, 5, size=300), accuracy)
    cost = np.tile([1.0, 3.0, 5.0, 9.0, 15.0], (200, 1))
    # A strictly concave prior, so that guard 1 is uniform allocation exactly.
    prior = np.array([0.5, 0.6, 0.65, 0.7, 0.72])
    scores = guarded_scores(proba @ curves, prior, guard)
    allocation = PriceRule.calibrate(scores, cost, budget).apply(scores, cost)
    assert allocation.expected(cost).mean() == pytest.approx(budget, rel=1e-9)
    if guard == 1.0:
        j = int(np.searchsorted(cost[0], budget, side="right")) - 1
        chosen = np.concatenate([allocation.cheap, allocation.dear[allocation.weight > 0]])
        assert set(chosen.tolist()) <= {j, j + 1}


def test_class_curves_unseen_action_gets_mean() -> None:
    from offline.learners import class_curves

    accuracy = np.array([[0.2, 0.4, 0.9], [0.6, 0.8, 0.9]])
    curves = class_curves(np.array([2, 2]), accuracy)
    assert curves[2].tolist() == pytest.approx([0.4, 0.6, 0.9])
    assert curves[0].tolist() == pytest.approx(accuracy.mean(axis=0).tolist())


def test_classifier_single_label_predicted() -> None:
    from offline.learners import OracleClassifier

    clf = OracleClassifier(n_actions=4)
    clf.fit([{"x": float(i)} for i in range(10)], np.full(10, 3))
    assert clf.predict_proba([{"x": 0.5}, {"y": 1.0}]).tolist() == [[0, 0, 0, 1.0]] * 2


def test_export_holdout_splits_a_set(tmp_path: Path) -> None:
    train_path, test_path = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    result = run_cli(
        "export", "--dataset", "math100", "--out", str(train_path), "--holdout", "0.25",
        "--holdout-out", str(test_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    train_ids = {q.id for q in read_samples(train_path)}
    test_ids = {q.id for q in read_samples(test_path)}
    assert len(test_ids) == 25
    assert len(train_ids) == 75
    assert not train_ids & test_ids


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--holdout", "1.5", "--holdout-out", "x.jsonl"], "--holdout must be between 0 and 1"),
        (["--holdout", "0.5"], "--holdout needs --holdout-out"),
    ],
)
def test_export_holdout_rejects_bad_values(tmp_path: Path, extra: list[str], message: str) -> None:
    result = run_cli("export", "--dataset", "math100", "--out", str(tmp_path / "a.jsonl"), *extra)
    assert result.returncode == 2
    assert message in result.stderr
