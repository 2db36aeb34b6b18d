"""The tool catalog of the default tool-calling recipe (recipes/tools-default): tools.json, stubs.py and
requests.json pass every check of its check_catalog.py (schemas, domains, stub signatures, templates, stubs run on
sampled values and return JSON, no overlap with the BFCL data when bfcl-eval is installed), and those checks
catch the faults they are meant to catch."""
from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from herd.sdg.filters import words

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "recipes" / "tools-default"


def _load_checker():
    spec = importlib.util.spec_from_file_location("tools_default_check_catalog", CATALOG / "check_catalog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


cc = _load_checker()


@pytest.fixture(scope="module")
def catalog():
    return cc.load(CATALOG)


@pytest.fixture(scope="module")
def bfcl_dir():
    path = cc.bfcl_data_dir()
    if path is None:
        pytest.skip("bfcl-eval is not installed (the Makefile installs it): BFCL overlap not checked")
    return path


def test_tools_are_well_formed_and_broad(catalog):
    tools, _, _ = catalog
    assert cc.check_tools(tools) == []
    assert cc.check_grammar(tools) == []
    assert cc.check_domains(tools) == []
    assert len(tools) >= 120 and len(cc.DOMAINS) >= 15
    kinds = cc.type_counts(tools)
    for kind in ("string", "integer", "number", "boolean", "enum", "array[string]", "array[number]", "object",
                 "optional", "no-parameter tools"):
        assert kinds[kind] > 0, kind


def test_every_tool_has_a_matching_stub(catalog):
    tools, stubs, _ = catalog
    assert cc.check_signatures(tools, stubs) == []
    assert set(stubs) == {t["function"]["name"] for t in tools}


def test_templates_cover_the_parameters(catalog):
    tools, _, requests = catalog
    assert cc.check_templates(tools, requests) == []
    assert set(requests) == {t["function"]["name"] for t in tools}


def test_stubs_run_on_sampled_values(catalog):
    tools, stubs, _ = catalog
    assert cc.check_runs(tools, stubs) == []


def test_no_overlap_with_bfcl(catalog, bfcl_dir):
    tools, _, requests = catalog
    assert cc.check_bfcl(tools, requests, bfcl_dir) == []


def test_the_checks_catch_faults(catalog):
    tools, stubs, requests = catalog
    by_name = {t["function"]["name"]: t for t in tools}
    broken = copy.deepcopy(tools)
    broken[0]["function"]["name"] = "WeatherNow"
    broken[1]["function"]["description"] = "Two sentences. Not one."
    broken[2]["function"]["parameters"]["properties"]["city"].pop("description")
    problems = cc.check_tools(broken)
    assert len(problems) >= 3 and any("snake_case" in p for p in problems)
    assert cc.check_domains(tools[1:]) and cc.check_domains(tools, {"weather": ("check_weather_now",)})

    bad_stubs = dict(stubs, average_numbers=lambda numbers: sum(numbers) / len(numbers),
                     convert_money=lambda amount, from_currency, to_currency="EUR": amount,
                     helper_not_a_tool=lambda: None)
    assert any("average_numbers(edge" in p and "ZeroDivisionError" in p for p in cc.check_runs(tools, bad_stubs))
    sig = cc.check_signatures(tools, bad_stubs)
    assert any("convert_money: required argument to_currency" in p for p in sig)
    assert any("helper_not_a_tool" in p for p in sig)

    bad_requests = copy.deepcopy(requests)
    bad_requests["convert_money"][0] = "Convert {amount} to {to_currency} {{now}}"
    bad_requests["check_weather_now"][0] = "Weather in {city} on {day}"
    found = cc.check_templates([by_name["convert_money"], by_name["check_weather_now"]], bad_requests)
    assert any("misses required ['from_currency']" in p for p in found)
    assert any("literal braces" in p for p in found)
    assert any("['day'] are not parameters" in p for p in found)


def test_bfcl_check_catches_a_copied_name_and_description(catalog, bfcl_dir):
    tools, _, requests = catalog
    names, texts = cc.bfcl_vocabulary(bfcl_dir)
    copied = copy.deepcopy(tools)
    copied[0]["function"]["name"] = sorted(n for n in names if "." not in n)[0]
    copied[1]["function"]["description"] = next(t for t in texts if len(words(t)) >= 12)
    found = cc.check_bfcl(copied, requests, bfcl_dir)
    assert any("same name as a BFCL function" in p for p in found)
    assert any(p.startswith(copied[1]["function"]["name"] + ": shares") for p in found)


def test_the_script_prints_one_summary_line():
    proc = subprocess.run([sys.executable, str(CATALOG / "check_catalog.py"), "--no-bfcl"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "tools" in lines[0] and "domains" in lines[0] and "templates" in lines[0]
    assert json.loads((CATALOG / "tools.json").read_text(encoding="utf-8"))
