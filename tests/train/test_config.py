"""`herd train ... --config FILE`: options from YAML / JSON / TOML, the command line winning over the file,
and bad files or values as one-line errors (exit status 2) before any model loads."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sft import QUESTIONS, dialog, herd_cli  # noqa: E402
from tinymodels import build_tiny_llama3  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cfg")
    model = build_tiny_llama3(root / "model", max_seq_len=2048)
    data = root / "tools.jsonl"
    data.write_text("".join(json.dumps(dialog(q)) + "\n" for q in QUESTIONS[:8]))
    return model, data


def test_a_yaml_config_trains_and_the_command_line_wins(setup, tmp_path):
    model, data = setup
    out = tmp_path / "out"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {model}\ndata: {data}\nout: {out}\nlora-rank: 4\nlora_alpha: 8\nmax_steps: 9\n"
                   "lr: 1.0e-2\nmax_seq_len: 256\nbatch_size: 2\njson: true\n")
    r = herd_cli("train", "sft", "--config", str(cfg), "--max-steps", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3  # the command line's --max-steps, not the file's 9
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)  # from the file
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(1e-2 * 0.75)  # lr 1e-2 from the file, cosine over 3 steps


@pytest.mark.parametrize("name, text, words", [
    ("a.json", '{"lora_rnk": 4}', "a.json: unknown option 'lora_rnk'"),
    ("a.yaml", "max_steps: many\n", "a.yaml: max_steps: expected int, got 'many'"),
    ("a.toml", 'dtype = "float16"\n', "a.toml: dtype: 'float16' is not one of float32, bfloat16"),
    ("a.yaml", "json: yes please\n", "a.yaml: json: expected true or false"),
    ("a.yaml", "[1, 2]\n", "a.yaml: expected a mapping of option names to values"),
    ("a.json", "{not json", "a.json: not valid JSON"),
    ("a.ini", "x=1", "a.ini: use a .yaml, .yml, .json or .toml file"),
    ("a.yaml", "lr: 1e-3\n", "--data, --out are required (on the command line or in --config)"),
])
def test_bad_configs_are_one_line(tmp_path, name, text, words):
    cfg = tmp_path / name
    cfg.write_text(text)
    r = herd_cli("train", "sft", "--config", str(cfg))
    assert r.returncode == 2, r.stderr[-2000:]
    assert words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_missing_config_file(tmp_path):
    r = herd_cli("train", "dpo", "--config", str(tmp_path / "none.yaml"), "--data", "x", "--out", "y")
    assert r.returncode == 2 and "none.yaml: No such file or directory" in r.stderr
