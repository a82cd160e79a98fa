"""Instruction records in prepare (data.format prompt_completion | messages): every format
read from .jsonl/.csv/.parquet, secrets scrubbed in every field, and each malformed record
stopping the stage with one line naming the file, the record number and the problem, with
nothing half-written left behind."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from codexlm import corpus, records
from codexlm.errors import UserError, run_stage

FAST = dict(
    include=["**/*"],
    text_column="text",
    min_chars=1,
    max_chars=10_000,
    val_fraction=0.2,
    test_fraction=0.2,
    scrub_secrets=True,
    near_dup_threshold=1.0,
    workers=1,
)


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You reverse words."},
            {"role": "user", "content": f"reverse word{i}"},
            {"role": "assistant", "content": f"{i}drow"},
        ]
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared(out: Path) -> list[dict]:
    rows = []
    for s in corpus.SPLITS:
        rows += [records.loads(t) for t in pq.read_table(out / f"{s}.parquet")["text"].to_pylist()]
    return rows


def test_messages_and_prompt_completion_from_every_table_format(tmp_path: Path) -> None:
    msgs = [chat(i) for i in range(30)]
    src = write_jsonl(tmp_path / "chat.jsonl", msgs)
    stats = corpus.prepare(str(src), out_dir=tmp_path / "a", data_format="messages", **FAST)
    assert stats["format"] == "messages" and sum(stats["documents"].values()) == 30
    assert sorted(r["messages"][1]["content"] for r in prepared(tmp_path / "a")) == sorted(
        m["messages"][1]["content"] for m in msgs
    )
    # parquet: messages as a list of structs; csv: prompt/completion strings
    table = pa.table({"messages": [m["messages"] for m in msgs]})
    pq.write_table(table, tmp_path / "chat.parquet")
    corpus.prepare(
        str(tmp_path / "chat.parquet"), out_dir=tmp_path / "b", data_format="messages", **FAST
    )
    assert sorted(map(records.dumps, prepared(tmp_path / "b"))) == sorted(
        map(records.dumps, prepared(tmp_path / "a"))
    )
    csv_path = tmp_path / "pc.csv"
    csv_path.write_text("prompt,completion\n" + "".join(f'"say {i}","{i}\n!"\n' for i in range(20)))
    corpus.prepare(str(csv_path), out_dir=tmp_path / "c", data_format="prompt_completion", **FAST)
    rows = prepared(tmp_path / "c")
    assert len(rows) == 20 and all(r["train_from"] == 1 for r in rows)
    assert {r["messages"][1]["content"] for r in rows} == {f"{i}\n!" for i in range(20)}


def test_conversational_prompt_completion_trains_only_the_completion(tmp_path: Path) -> None:
    rec = {
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "add 1 2"},
        ],
        "completion": [{"role": "assistant", "content": "3"}],
    }
    ex = records.example_of(rec, "prompt_completion", "f: record 1")
    assert ex["train_from"] == 3 and len(ex["messages"]) == 4


def test_secrets_are_scrubbed_in_every_message(tmp_path: Path) -> None:
    key = "AKIA" + "IOSFODNN7EXAMPLE"  # pragma: allowlist secret (AWS's documented example)
    rows = [chat(i) for i in range(10)]
    rows[0]["messages"][1]["content"] = f"my key is {key} ok"
    rows[1]["messages"][2]["content"] = f"aws_access_key_id = {key}"
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    stats = corpus.prepare(str(src), out_dir=tmp_path / "o", data_format="messages", **FAST)
    text = json.dumps(prepared(tmp_path / "o"))
    assert key not in text and sum(stats["secrets"].values()) >= 2


MALFORMED = [
    ({"messages": [{"content": "hi"}]}, "messages message 1 has no role"),
    ({"messages": [{"role": "user", "content": 3}]}, "content is a int, not a string"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
    ({"messages": []}, "empty conversation"),
    ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn in the conversation"),
    ({"messages": [{"role": "user"}]}, "(user) has no content"),
    ({"messages": "hello"}, "messages is a str, not a list of messages"),
    ({"text": "x"}, "no messages (keys: text)"),
    ([1, 2], "the record is a list, not an object"),
]


@pytest.mark.parametrize(("record", "problem"), MALFORMED, ids=[m[1] for m in MALFORMED])
def test_a_malformed_record_is_one_line_naming_file_and_record(
    tmp_path: Path, record: object, problem: str
) -> None:
    rows: list = [chat(i) for i in range(5)]
    rows.insert(3, record)
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        corpus.prepare(str(src), out_dir=out, data_format="messages", **FAST)
    assert str(e.value).startswith(f"{src}: record 4: ") and problem in str(e.value)
    assert "\n" not in str(e.value)
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}, "both be strings"),
        (
            {"prompt": [{"role": "user", "content": "q"}], "completion": []},
            "no assistant turn in the completion",
        ),
        ({"prompt": "q"}, "no completion"),
    ],
)
def test_malformed_prompt_completion_records(tmp_path: Path, record: dict, problem: str) -> None:
    src = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": "b"}, record])
    with pytest.raises(UserError, match=f"^{src}: record 2: .*{problem}"):
        corpus.prepare(str(src), out_dir=tmp_path / "o", data_format="prompt_completion", **FAST)


def test_the_stage_entry_prints_the_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_jsonl(tmp_path / "x.jsonl", [chat(0), {"messages": [{"role": "user"}]}])
    monkeypatch.setattr(sys, "argv", ["prepare_stage.py"])

    def main() -> None:
        corpus.prepare(str(src), out_dir=tmp_path / "o", data_format="messages", **FAST)

    with pytest.raises(SystemExit) as e:
        run_stage(main)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # after tqdm's progress lines
    assert err[-1] == f"error: {src}: record 2: messages message 1 (user) has no content"
    assert not any("Traceback" in line for line in err)


def test_a_csv_without_the_formats_columns_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(UserError, match="no column 'prompt' or 'completion'"):
        corpus.prepare(str(path), out_dir=tmp_path / "o", data_format="prompt_completion", **FAST)


def test_the_built_in_dataset_is_derived_deterministically(tmp_path: Path) -> None:
    import io
    import tarfile

    spec = importlib.util.spec_from_file_location("instruct", ROOT / "tools/instruct.py")
    instruct = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(instruct)

    source = (
        'def area(w, h):\n    """Width times height."""\n    return w * h\n\n'
        "def noop():\n    pass\n\n"
        'class K:\n    def name(self):\n        """The name."""\n        return "k"\n'
    )
    archive = tmp_path / "lib.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("Lib/m.py")
        info.size = len(source.encode())
        tar.addfile(info, io.BytesIO(source.encode()))
    assert instruct.write(archive, tmp_path / "a.jsonl") == 4
    instruct.write(archive, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    answers = [r["messages"][2]["content"] for r in rows]
    assert answers == ["return w * h", 'return "k"', "area()", "name()"]
    assert rows[0]["messages"][1]["content"] == 'def area(w, h):\n    """Width times height."""'
    assert [sft_task(r) for r in rows] == ["body", "body", "call", "call"]
    # and prepare reads it as a messages source
    corpus.prepare(
        str(tmp_path / "a.jsonl"), out_dir=tmp_path / "o", data_format="messages", **FAST
    )


def sft_task(record: dict) -> str:
    from codexlm.sft_eval import task_of

    return task_of(record["messages"])
