"""Tests of the bundled data files, the program sandbox of the converter and samples-file errors."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offline.aqua import ProgramValue, nearest_letter, read_choice, symbol_value
from offline.convert import (
    GPT3_SOLVERS,
    RAW_FILES,
    ConversionError,
    RunResult,
    Sandbox,
    convert_aqua,
    convert_gsm8k_gpt3,
    convert_svamp,
)
from online.answers import canonical_key, extract_answer
from online.datasets import DATASETS, load_dataset
from online.samples import Question, SamplesFormatError, read_samples

# name -> (questions, samples per question)
EXPECTED = {"svamp": (999, 30), "math100": (100, 8), "gsm8k": (1319, 0), "math500": (500, 0)}
ID_PATTERN = {
    "svamp": r"svamp-\d{4}",
    "math100": r"math100-\d{3}",
    "gsm8k": r"gsm8k-\d{4}",
    "math500": r"math500_\d{4}",
}


@pytest.fixture(scope="module")
def bundled() -> dict[str, list[Question]]:
    return {name: load_dataset(name) for name in EXPECTED}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(workers=1, cpu_seconds=1, wall_seconds=5.0) as box:
        yield box


def test_every_registered_dataset_is_checked() -> None:
    assert set(DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts(bundled: dict[str, list[Question]], name: str) -> None:
    questions, per_question = EXPECTED[name]
    data = bundled[name]
    assert len(data) == questions
    assert {len(q.samples) for q in data} == {per_question}
    assert all(q.gold for q in data)
    assert all(q.meta["dataset"] == name for q in data)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ids_unique_and_well_formed(bundled: dict[str, list[Question]], name: str) -> None:
    ids = [q.id for q in bundled[name]]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(ID_PATTERN[name], i) for i in ids)


@pytest.mark.parametrize("name", ["svamp", "math100"])
def test_stored_answer_is_extracted_from_text(
    bundled: dict[str, list[Question]], name: str
) -> None:
    mismatches = [
        (q.id, j, s.answer, extract_answer(s.text))
        for q in bundled[name]
        for j, s in enumerate(q.samples)
        if s.text is None or s.answer != extract_answer(s.text)
    ]
    assert mismatches == []


def test_svamp_answers_are_rounded_keys(bundled: dict[str, list[Question]]) -> None:
    for q in bundled["svamp"]:
        assert q.gold == canonical_key(q.gold)
        for s in q.samples:
            assert s.text is not None
            last = s.text.splitlines()[-1]
            if s.answer is None:
                assert last.startswith("No answer was produced")
                assert not re.search(r"\d", last)
            else:
                assert last.startswith("The answer is ")
                # at most 6 decimal places survive the rounding
                assert re.fullmatch(r"The answer is -?\d+(\.\d{1,6})?\.", last)


def test_math_levels(bundled: dict[str, list[Question]]) -> None:
    for name in ("math100", "math500"):
        assert {q.meta["level"] for q in bundled[name]} == {1, 2, 3, 4, 5}
    assert all(isinstance(q.meta["subject"], str) for q in bundled["math500"])
    assert all(isinstance(s.correct, bool) for q in bundled["math100"] for s in q.samples)


def test_sandbox_stops_loop_allocation_and_socket(sandbox: Sandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        programs = [
            "while True:\n    pass\nans = 1",
            "block = bytearray(1024 ** 3)\nans = 1",
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nans = 1",
            "ans = 6 * 7",
        ]
        started = time.monotonic()
        results = sandbox.run(programs)
    assert time.monotonic() - started < 10
    assert [r.value for r in results] == [None, None, None, 42]
    assert "CPU-time" in str(results[0].failure)
    assert "memory" in str(results[1].failure)
    assert results[2].failure is not None


def test_sandbox_gives_each_program_a_fresh_namespace(sandbox: Sandbox) -> None:
    results = sandbox.run(["ans = 5\nleft_over = 1", "ans = left_over", "x = 1", "ans = 'five'"])
    assert results[0] == RunResult(5, None)
    assert results[1].value is None
    assert "NameError" in str(results[1].failure)
    assert results[2] == RunResult(None, "left ans unset")
    assert results[3].value is None


def test_sandbox_has_no_network_interfaces_but_loopback(sandbox: Sandbox) -> None:
    if sandbox.isolation == "audit hook only":
        pytest.skip("unshare cannot make a network namespace on this machine")
    [result] = sandbox.run(["import socket\nans = len(socket.if_nameindex())"])
    assert result == RunResult(1, None)


def _write_raw_svamp(raw: Path) -> None:
    path = raw / RAW_FILES["svamp"]
    path.parent.mkdir(parents=True)
    rows = [
        {"demonstration": "prompt"},
        {
            "passage": "A cake is cut in 3 equal parts.",
            "question": "How big is each part of 10 kg?",
            "answer": 3.333333,
            "executed": 3.333333,
            "generated": ["ans = 10 / 3", "ans = 3.3333333", "ans = 10 // 3", "x = 2"],
        },
        {
            "passage": "Tom has 4 apples.",
            "question": "How many does he have after eating 5?",
            "answer": -1.0,
            "executed": -1.0,
            "generated": ["ans = 4 - 5", "ans = 4 -", "ans = -1.0000000001"],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_svamp_conversion_is_deterministic(sandbox: Sandbox, tmp_path: Path) -> None:
    _write_raw_svamp(tmp_path / "raw")
    # the same file name in two folders: gzip stores the name in its header
    first, second = tmp_path / "a" / "svamp.jsonl.gz", tmp_path / "b" / "svamp.jsonl.gz"
    first.parent.mkdir()
    second.parent.mkdir()
    report = convert_svamp(tmp_path / "raw", first, sandbox)
    convert_svamp(tmp_path / "raw", second, sandbox)
    assert first.read_bytes() == second.read_bytes()
    assert report.majority_accuracy == 1.0
    q1, q2 = read_samples(first)
    third, minus_one = canonical_key("3.333333"), canonical_key("-1")
    assert (q1.id, q1.gold, q2.gold) == ("svamp-0001", third, minus_one)
    assert q1.question == "A cake is cut in 3 equal parts. How big is each part of 10 kg?"
    assert [s.answer for s in q1.samples] == [third, third, canonical_key("3"), None]
    assert [s.answer for s in q2.samples] == [minus_one, None, minus_one]
    assert q1.samples[0].text == "ans = 10 / 3\nThe answer is 3.333333."


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"question": "q"}', "field 'id' must be a non-empty string, got None"),
        ('{"id": "b", "question": " "}', "field 'question' must be a non-empty string"),
        ('{"id": "b", "question": "q", "samples": {}}', "field 'samples' must be a list, got dict"),
        (
            '{"id": "b", "question": "q", "samples": [{"answer": "1", "tokens": -3}]}',
            "samples[0].tokens must be a non-negative integer, got -3",
        ),
        (
            '{"id": "b", "question": "q", "samples": [{"correct": "yes"}]}',
            "samples[0].correct must be true, false or absent, got 'yes'",
        ),
        ('{"id": "a", "question": "q"}', "duplicate id 'a'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "question": "q"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(SamplesFormatError) as info:
        read_samples(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("options", "value", "letter"),
    [
        (["A)226", "B)230", "C)240", "D)260", "E)280"], (234.29,), "B"),
        (["A)20%", "B)28%", "C)36%", "D)40%", "E)42%"], (0.28,), "B"),
        (["A)20%", "B)28%", "C)36%", "D)40%", "E)42%"], (36.0,), "C"),
        (["A)Rs. 4,400", "B)$4,270", "C)s.4000", "D)3937.50 Rs", "E)None"], (3940.0,), "D"),
        (["A)4 1/3 km/h", "B)7 2/3 km/h", "C)9 ½ km/h", "D)8 km/h", "E)81"], (9.4,), "C"),
        (["A)5(√3 + 1)", "B)6(√3+√2)", "C)7(√3 \u2013 1)", "D)8(√3\u22122)", "E)0"], (5.1,), "C"),
        (["A)2!", "B)3!", "C)7!", "D)8!", "E)9!"], (5040,), "C"),
        (["A)750pi", "B)1500pi", "C)1875pi", "D)3000pi", "E)7500pi"], (9424.78,), "D"),
        (["A)1 hr 23 min", "B)1 hr 15 min", "C)56 min", "D)1 hour", "E)2"], (75.0,), "B"),
        (["A)1 hr 23 min", "B)1 hr 15 min", "C)56 min", "D)1 hour", "E)2"], (1.38,), "A"),
        (["A)62, 35", "B)62, 34", "C)34, 62", "D)42, 62", "E)62, 42"], (34.0, 62.0), "C"),
        (["A)69:91", "B)59:91", "C)59:90", "D)6:9", "E)69:101"], (0.655,), "C"),
        (["A)69:91", "B)59:91", "C)59:90", "D)6:9", "E)69:101"], (6.6, 10.2), "B"),
        (["A)M + N / 8", "B)2M + N / 8", "C)M + N", "D)8", "E)1 step/minute"], (1.0,), "E"),
        (["A)A)59", "B)B)69", "C)C)79", "D)D)89", "E)E)99"], (70.0,), "B"),
        (["A)9", "B)11", "C)22", "D)25", "E)31"], (-21.4, 21.4), "C"),
        (["A)80 kmph", "B)50", "C)120", "D)70", "E)80 kmph"], (80.0,), "A"),
    ],
)
def test_aqua_value_maps_to_nearest_option(
    options: list[str], value: tuple[float, ...], letter: str
) -> None:
    choices = [read_choice(o) for o in options]
    assert nearest_letter(ProgramValue(value), choices) == letter


def test_aqua_symbolic_value_needs_the_same_letters() -> None:
    options = ["A)(zy - 2x)/z", "B)(zy-2)/z", "C)(zx - y)/(z-2)", "D)(zy \u2013 2x)/(z -2)", "E)0"]
    choices = [read_choice(o) for o in options]
    x, y, z = (symbol_value(name) for name in "xyz")
    answer = ProgramValue(((y * z - 2 * x) / (z - 2),), frozenset("xyz"))
    assert nearest_letter(answer, choices) == "D"
    assert nearest_letter(ProgramValue((1.0,), frozenset("xyw")), choices) is None
    assert nearest_letter(ProgramValue((0.1,)), choices) == "E"


@pytest.mark.parametrize(
    "option", ["E)None of these", "D)Cannot be determined", "A)20 < x < 54", "C)II only", "B)?"]
)
def test_aqua_option_without_a_number(option: str) -> None:
    assert read_choice(option).readings == ()


def test_aqua_option_needs_a_letter() -> None:
    with pytest.raises(ValueError, match="option must start with a letter A to E"):
        read_choice("5 hours")


def _write_raw_aqua(raw: Path) -> None:
    path = raw / RAW_FILES["aqua"]
    path.parent.mkdir(parents=True)
    prompt = {"demonstration": "prompt"}
    rows = [
        prompt,
        {
            "question": "A train covers 120 km in 2 hours. What is its speed?",
            "options": ["A)50 km/h", "B)60 km/h", "C)70 km/h", "D)80 km/h", "E)None"],
            "answer": "B",
            "generated_prediction": "60.0",
            "prediction": "B",
            "generated": [
                "\nans = 120 / 2",
                "\nspeed = Symbol('speed', positive=True)\n"
                "solution = solve_it(speed * 2 - 120, speed)\nans = solution[speed]",
                "\nans = 120 * 2 / 3",
                "\nans = 'sixty'",
                "\nx = Symbol('x')\nans = x + 1",
            ],
        },
        prompt,
        {
            "question": "What is 15% of 200, as a share of 100?",
            "options": ["A)10%", "B)20%", "C)30%", "D)40%", "E)50%"],
            "answer": "C",
            "generated_prediction": "None",
            "prediction": "None",
            "generated": ["\nans = 0.15 * 200 / 100", "\nans = (30, 0.3)", "\nans = math.sqrt(-1)"],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_aqua_conversion_is_deterministic(tmp_path: Path) -> None:
    _write_raw_aqua(tmp_path / "raw")
    first, second = tmp_path / "a" / "aqua.jsonl.gz", tmp_path / "b" / "aqua.jsonl.gz"
    first.parent.mkdir()
    second.parent.mkdir()
    with Sandbox(workers=1, cpu_seconds=2, wall_seconds=10.0, runtime="sympy") as box:
        report = convert_aqua(tmp_path / "raw", first, box)
        convert_aqua(tmp_path / "raw", second, box)
    assert first.read_bytes() == second.read_bytes()
    assert (report.questions, report.programs, report.null_answers) == (2, 8, 3)
    assert (report.recorded_letters, report.agrees_with_recorded) == (1, 1)
    assert (report.recorded_values, report.recorded_value_maps_to_recorded_letter) == (1, 1)
    assert report.majority_accuracy == 1.0

    q1, q2 = read_samples(first)
    assert (q1.id, q1.gold, q2.id, q2.gold) == ("aqua-001", "B", "aqua-002", "C")
    assert q1.question.endswith("speed?\nA)50 km/h\nB)60 km/h\nC)70 km/h\nD)80 km/h\nE)None")
    assert [s.answer for s in q1.samples] == ["B", "B", "D", None, None]
    assert [s.answer for s in q2.samples] == ["C", "C", None]
    assert q1.samples[0].text == "ans = 120 / 2\nans is 60, nearest to option B. The answer is B."
    assert all(extract_answer(s.text) == s.answer for q in (q1, q2) for s in q.samples)


def test_aqua_conversion_needs_sympy_runtime(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runtime 'sympy'"):
        convert_aqua(tmp_path, tmp_path / "aqua.jsonl.gz", sandbox)


def _write_raw_gsm8k(raw: Path, solutions: list[dict[str, object]]) -> None:
    folder = raw / Path(RAW_FILES["gsm8k"]).parent
    folder.mkdir(parents=True)
    questions = [
        "Ann has 2 pens and buys 3. How many pens?",
        "Bo reads 4 pages a day. Pages in 2 days?",
    ]
    golds = ["5", "8"]
    test = [
        {"question": q, "answer": f"work\n#### {g}"} for q, g in zip(questions, golds, strict=True)
    ]
    (raw / RAW_FILES["gsm8k"]).write_text("".join(json.dumps(r) + "\n" for r in test))
    rows = [{"question": q, **s} for q, s in zip(questions, solutions, strict=True)]
    (raw / RAW_FILES["gsm8k_gpt3"]).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_gsm8k_gpt3_keeps_solvers_as_samples(tmp_path: Path) -> None:
    def solved(answers: list[str], correct: list[bool]) -> dict[str, object]:
        return {
            solver: {"solution": f"steps\nA: {a}", "is_correct": c}
            for solver, a, c in zip(GPT3_SOLVERS, answers, correct, strict=True)
        }

    _write_raw_gsm8k(
        tmp_path / "raw",
        [
            solved(["5", "6", "5", "5"], [True, False, True, True]),
            solved(["8", "8.0", "$8", "7"], [True, True, True, False]),
        ],
    )
    out = tmp_path / "gsm8k_gpt3.jsonl.gz"
    assert convert_gsm8k_gpt3(tmp_path / "raw", out) == 1.0
    first, second = read_samples(out)
    assert (first.id, first.gold, second.gold) == ("gsm8k-0001", "5", "8")
    assert [s.answer for s in first.samples] == ["5", "6", "5", "5"]
    assert [s.correct for s in second.samples] == [True, True, True, False]
    assert [s.answer for s in second.samples][1:3] == ["8", "8"]


def test_gsm8k_gpt3_names_bad_solver_record(tmp_path: Path) -> None:
    broken = {solver: {"solution": "A: 5", "is_correct": True} for solver in GPT3_SOLVERS}
    broken["175b_finetuning"] = {"solution": "A: 5", "is_correct": "yes"}
    fine = {solver: {"solution": "A: 8", "is_correct": True} for solver in GPT3_SOLVERS}
    _write_raw_gsm8k(tmp_path / "raw", [broken, fine])
    with pytest.raises(ConversionError, match=r":1: field '175b_finetuning'.*'is_correct'"):
        convert_gsm8k_gpt3(tmp_path / "raw", tmp_path / "out.jsonl.gz")
