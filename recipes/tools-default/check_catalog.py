"""Checks the tool catalog of the default tool-calling recipe (tools.json, stubs.py, requests.json).

    .venv/bin/python recipes/tools-default/check_catalog.py            # one summary line; exit 1 on any problem
    .venv/bin/python recipes/tools-default/check_catalog.py --no-bfcl  # skip the BFCL overlap check

What it asserts: the JSON files parse and load as `herd sdg tools` loads them; every tool is well formed (a
verb-first snake_case name, one-sentence description, a small JSON schema with described properties), belongs to
one of DOMAINS, and its schema compiles as the engine's call grammar; every tool has a stub whose signature takes
exactly its properties (required ones without a default, optional ones with one) and every public function of
stubs.py is a tool; every request template names only its tool's properties and all the required ones, with no
other braces or brackets; every stub runs on values sampled from its schema (typical, required-only, edge and
extreme values), deterministically, and returns JSON-serialisable output; and nothing overlaps the Berkeley
Function Calling Leaderboard data shipped in the `bfcl_eval` package: no tool name equals a BFCL function name (or
the last dotted part of one), and no tool or parameter description or request template shares an 8-word sequence
with a BFCL question or description.
Each check returns a list of problems (empty when fine), so tests can call them one by one.
"""
from __future__ import annotations

import inspect
import json
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NGRAM = 8
MIN_TOOLS, MIN_DOMAINS = 120, 15
TEMPLATES_PER_TOOL = (4, 6)
MAX_PROPERTIES = 5
TYPES = ("string", "integer", "number", "boolean", "array", "object")
VERBS = {"activate", "add", "adjust", "average", "book", "bookmark", "build", "buy", "calculate", "cancel", "change",
         "check", "compare", "compose", "compute", "convert", "count", "create", "diagnose", "estimate", "find",
         "generate", "get", "invite", "list", "lock", "log", "look", "lookup", "make", "mark", "measure", "order",
         "pair", "pause", "ping", "place", "plan", "play", "post", "project", "rate", "recommend", "record",
         "redeem", "reserve", "round", "run", "scale", "schedule", "search", "send", "set", "show", "skip", "split",
         "start", "submit", "subscribe", "suggest", "summarize", "switch", "track", "translate", "view", "write",
         "zip"}

DOMAINS = {
    "weather": ("check_weather_now", "get_multi_day_forecast", "check_air_pollution", "get_uv_level",
                "get_rain_chance", "get_sun_times", "get_pollen_count"),
    "travel": ("search_flight_options", "look_up_flight_status", "search_hotel_rooms", "reserve_hotel_room",
               "check_visa_rules", "book_rental_car", "estimate_trip_budget"),
    "finance": ("convert_money", "get_stock_quote", "estimate_loan_payment", "split_restaurant_bill",
                "record_expense", "project_savings_growth", "create_monthly_budget", "list_recent_transactions"),
    "shopping": ("search_store_catalog", "add_item_to_cart", "view_shopping_cart", "track_parcel",
                 "compare_store_prices", "redeem_coupon_code", "start_product_return", "set_price_alert"),
    "calendar": ("add_calendar_event", "show_agenda", "cancel_calendar_event", "find_open_time_slot",
                 "create_reminder", "list_public_holidays", "invite_people_to_event"),
    "messaging": ("compose_email", "search_mailbox", "send_sms", "get_unread_count", "write_reply_draft",
                  "post_team_chat_message", "set_out_of_office"),
    "maps": ("find_places_nearby", "plan_route", "lookup_coordinates", "measure_distance", "find_parking_spots",
             "get_city_clock_time"),
    "cooking": ("suggest_recipes", "scale_recipe_servings", "get_food_nutrition", "pair_wine_with_dish",
                "convert_kitchen_measure", "start_cooking_timer", "find_ingredient_substitute"),
    "health": ("log_exercise_session", "estimate_burned_calories", "log_water_drunk", "get_sleep_report",
               "record_blood_pressure", "get_today_steps", "set_medication_reminder", "compute_heart_rate_zones"),
    "math": ("convert_distance_units", "convert_temperature_scale", "compute_percentage_of", "average_numbers",
             "round_to_decimals", "count_days_between", "convert_weight_units", "compute_percent_change"),
    "sports": ("get_latest_match_result", "show_league_table", "look_up_athlete_stats", "list_upcoming_games",
               "reserve_sports_court", "get_race_calendar"),
    "media": ("play_music_track", "build_playlist", "find_cinema_showtimes", "recommend_podcast_episodes",
              "change_speaker_volume", "pause_music", "skip_to_next_track", "rate_movie"),
    "dev": ("search_local_files", "make_directory", "check_disk_space", "run_test_suite", "ping_website", "zip_files",
            "create_pull_request", "list_open_issues"),
    "home": ("adjust_thermostat", "switch_lights_on", "switch_lights_off", "lock_doors", "start_vacuum_cleaner",
             "view_security_camera", "activate_home_scene", "get_energy_usage", "check_all_sensors"),
    "education": ("look_up_word_meaning", "translate_phrase", "find_online_classes", "generate_flashcards",
                  "check_text_spelling", "get_chemical_element", "calculate_grade_average"),
    "news": ("get_headlines", "search_news_articles", "summarize_web_article", "subscribe_to_newsletter",
             "get_trending_topics"),
    "jobs": ("search_job_openings", "estimate_market_salary", "bookmark_job_posting", "submit_job_application",
             "get_application_status"),
    "real_estate": ("search_homes_to_buy", "estimate_property_value", "compute_mortgage_payment",
                    "find_apartments_to_rent", "book_property_viewing"),
    "pets": ("find_vets_nearby", "log_pet_feeding", "get_breed_profile", "book_grooming_appointment",
             "convert_pet_age_to_human"),
    "gardening": ("get_planting_window", "schedule_garden_watering", "diagnose_plant_issue", "list_companion_plants",
                  "check_frost_risk", "calculate_soil_needed"),
    "transport": ("order_taxi_ride", "get_next_departures", "find_charging_stations", "check_fuel_prices",
                  "buy_train_ticket"),
    "restaurants": ("reserve_restaurant_table", "find_places_to_eat", "place_delivery_order", "get_delivery_status",
                    "get_restaurant_menu"),
    "productivity": ("add_todo_task", "list_todo_tasks", "mark_task_done", "write_note", "search_notes",
                     "start_focus_session", "get_daily_briefing"),
}


# ---------------------------------------------------------------- loading

def load(folder: Path = HERE) -> tuple[list[dict[str, Any]], dict[str, Callable[..., Any]], dict[str, list[str]]]:
    """tools.json, stubs.py and requests.json, read the way `herd sdg tools` reads them."""
    from herd.sdg.tools import load_stubs, read_tools

    tools = read_tools(folder / "tools.json")
    stubs = load_stubs(folder / "stubs.py")
    requests = json.loads((folder / "requests.json").read_text(encoding="utf-8"))
    return tools, stubs, requests


def _fn(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function") or {}


def _params(tool: dict[str, Any]) -> dict[str, Any]:
    return _fn(tool).get("parameters") or {}


def _props(tool: dict[str, Any]) -> dict[str, Any]:
    return _params(tool).get("properties") or {}


def _required(tool: dict[str, Any]) -> list[str]:
    return list(_params(tool).get("required") or [])


# ---------------------------------------------------------------- tools.json

def _check_property(where: str, spec: Any, nested_ok: bool) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where}: not an object"]
    out = []
    kind = spec.get("type")
    if kind not in TYPES:
        out.append(f"{where}: type {kind!r} is not one of {TYPES}")
    if not isinstance(spec.get("description"), str) or not spec["description"].strip():
        out.append(f"{where}: no description")
    if "enum" in spec:
        enum = spec["enum"]
        if kind != "string" or not isinstance(enum, list) or not enum or len(set(enum)) != len(enum) \
                or not all(isinstance(v, str) and v for v in enum):
            out.append(f"{where}: enum must be a non-empty list of distinct strings on a string property")
    if kind == "array":
        items = spec.get("items")
        if not isinstance(items, dict) or items.get("type") not in ("string", "integer", "number"):
            out.append(f"{where}: an array needs items of type string, integer or number")
        elif "enum" in items and (items["type"] != "string" or not items["enum"]):
            out.append(f"{where}: item enum must be a non-empty list of strings")
    if kind == "object":
        if not nested_ok:
            out.append(f"{where}: objects nest one level at most")
        inner = spec.get("properties")
        if not isinstance(inner, dict) or not inner:
            out.append(f"{where}: a nested object needs properties")
        else:
            out += [p for k, v in inner.items() for p in _check_property(f"{where}.{k}", v, False)]
            req = spec.get("required", [])
            if not isinstance(req, list) or not set(req) <= set(inner):
                out.append(f"{where}: required names a missing property")
    return out


def check_tools(tools: list[dict[str, Any]]) -> list[str]:
    """Names, descriptions and schemas of every tool definition."""
    import jsonschema

    out: list[str] = []
    if len(tools) < MIN_TOOLS:
        out.append(f"only {len(tools)} tools (at least {MIN_TOOLS} wanted)")
    names = [_fn(t).get("name") for t in tools]
    out += [f"tool name {n!r} is used {c} times" for n, c in Counter(names).items() if c > 1]
    for tool in tools:
        fn = _fn(tool)
        name = fn.get("name")
        if tool.get("type") != "function" or set(tool) != {"type", "function"}:
            out.append(f"{name}: expected exactly {{'type': 'function', 'function': ...}}")
        if set(fn) != {"name", "description", "parameters"}:
            out.append(f"{name}: function needs exactly name, description and parameters")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", name):
            out.append(f"{name!r}: not a snake_case name of two or more words")
        elif name.split("_")[0] not in VERBS:
            out.append(f"{name}: does not start with a known verb (add it to VERBS if it is one)")
        desc = fn.get("description")
        if not isinstance(desc, str) or not re.fullmatch(r"[A-Z][^.!?]*[a-z0-9)]\.", desc.strip()):
            out.append(f"{name}: description must be one plain sentence ending with a full stop: {desc!r}")
        params = fn.get("parameters")
        if not isinstance(params, dict) or params.get("type") != "object" \
                or not isinstance(params.get("properties"), dict) or not isinstance(params.get("required"), list):
            out.append(f"{name}: parameters must be an object schema with properties and required")
            continue
        try:
            jsonschema.Draft202012Validator.check_schema(params)
        except jsonschema.SchemaError as e:
            out.append(f"{name}: not a valid JSON schema: {e.message}")
        props, req = params["properties"], params["required"]
        if len(props) > MAX_PROPERTIES:
            out.append(f"{name}: {len(props)} properties (at most {MAX_PROPERTIES})")
        if len(set(req)) != len(req) or not set(req) <= set(props):
            out.append(f"{name}: required must list distinct properties")
        for key, spec in props.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
                out.append(f"{name}.{key}: property names are snake_case")
            out += _check_property(f"{name}.{key}", spec, True)
    return out


def check_grammar(tools: list[dict[str, Any]]) -> list[str]:
    """Every parameter schema compiles as the engine's JSON-schema grammar (how the SDG constrains calls);
    nothing to check where this Herd has no `schema_problem`."""
    try:
        from herd.engine.structured import schema_problem
    except ImportError:
        return []
    out = []
    for tool in tools:
        problem = schema_problem(_params(tool))
        if problem:
            out.append(f"{_fn(tool).get('name')}: the call grammar does not compile: {problem}")
    return out


def check_domains(tools: list[dict[str, Any]], domains: dict[str, tuple[str, ...]] = DOMAINS) -> list[str]:
    """Every tool in exactly one domain, every domain entry a tool, and enough domains."""
    out = []
    names = {_fn(t).get("name") for t in tools}
    listed = Counter(n for members in domains.values() for n in members)
    out += [f"{n}: listed in {c} domains" for n, c in listed.items() if c > 1]
    out += [f"{n}: in DOMAINS but not in tools.json" for n in sorted(set(listed) - names)]
    out += [f"{n}: in no domain (add it to DOMAINS)" for n in sorted(names - set(listed))]
    if len([d for d, members in domains.items() if members]) < MIN_DOMAINS:
        out.append(f"only {len(domains)} domains (at least {MIN_DOMAINS} wanted)")
    return out


# ---------------------------------------------------------------- stubs.py

def check_signatures(tools: list[dict[str, Any]], stubs: dict[str, Callable[..., Any]]) -> list[str]:
    """One stub per tool, taking exactly the tool's properties as keyword arguments."""
    names = {_fn(t)["name"] for t in tools}
    out = [f"stubs.py: public function {n} is not a tool (prefix helpers with _)" for n in sorted(set(stubs) - names)]
    for tool in tools:
        name = _fn(tool)["name"]
        if name not in stubs:
            out.append(f"{name}: no stub in stubs.py")
            continue
        sig = inspect.signature(stubs[name])
        params = sig.parameters
        odd = [p.name for p in params.values() if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if odd:
            out.append(f"{name}: stub takes *args/**kwargs or positional-only {odd}")
        if set(params) != set(_props(tool)):
            out.append(f"{name}: stub arguments {sorted(params)} != properties {sorted(_props(tool))}")
            continue
        for key in params:
            has_default = params[key].default is not inspect.Parameter.empty
            if key in _required(tool) and has_default:
                out.append(f"{name}: required argument {key} has a default")
            if key not in _required(tool) and not has_default:
                out.append(f"{name}: optional argument {key} needs a default")
    return out


WORDS = ("Paris", "Lisbon", "Kyoto", "Nairobi", "Quito", "Oslo", "Tbilisi", "Hobart")


def sample_value(spec: dict[str, Any], variant: str = "typical", key: str = "") -> Any:
    """A value valid under a property schema. variant: typical (enums -> first value, strings -> a city-like word,
    integers -> 3, numbers -> 2.5, booleans -> True, arrays of one item, objects with all their properties),
    required (typical, nested objects with their required properties only), edge (0, 0.0, "", False, [] and
    required-only objects) or extreme (the last enum value, very large or negative numbers, long unicode text,
    three-item arrays)."""
    kind = spec.get("type")
    if "enum" in spec:
        return spec["enum"][-1 if variant == "extreme" else 0]
    if kind == "string":
        extreme = "Zürich-Straße 7 — ünïcødé " * 8
        return {"edge": "", "extreme": extreme}.get(variant, WORDS[len(key) % len(WORDS)])
    if kind == "integer":
        return {"edge": 0, "extreme": -(10 ** 9) if len(key) % 2 else 10 ** 12}.get(variant, 3)
    if kind == "number":
        return {"edge": 0.0, "extreme": 1e15 if len(key) % 2 else -1e12}.get(variant, 2.5)
    if kind == "boolean":
        return variant != "edge"
    if kind == "array":
        count = {"edge": 0, "extreme": 3}.get(variant, 1)
        return [sample_value(spec.get("items") or {"type": "string"}, variant, key + str(k)) for k in range(count)]
    if kind == "object":
        inner = spec.get("properties") or {}
        keep = inner if variant in ("typical", "extreme") else {k: inner[k] for k in spec.get("required", [])}
        return {k: sample_value(v, variant, k) for k, v in keep.items()}
    return None


def sample_calls(tool: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(variant, arguments) for the variants of sample_value; the required variant leaves optional ones out."""
    props, req = _props(tool), _required(tool)
    for variant in ("typical", "required", "edge", "extreme"):
        keys = req if variant == "required" else list(props)
        yield variant, {k: sample_value(props[k], variant, k) for k in keys}


def check_runs(tools: list[dict[str, Any]], stubs: dict[str, Callable[..., Any]]) -> list[str]:
    """Every stub runs on every sampled call, twice with the same result, and returns JSON-serialisable data."""
    import jsonschema

    out = []
    for tool in tools:
        name = _fn(tool)["name"]
        if name not in stubs:
            continue  # reported by check_signatures
        validator = jsonschema.Draft202012Validator(_params(tool))
        for variant, args in sample_calls(tool):
            where = f"{name}({variant}: {json.dumps(args, ensure_ascii=False)[:120]})"
            if not validator.is_valid(args):
                out.append(f"{where}: the sampled call does not match the schema (fix sample_value)")
                continue
            try:
                first, second = stubs[name](**args), stubs[name](**args)
            except Exception as e:  # noqa: BLE001 - any exception is a stub bug
                out.append(f"{where}: raised {type(e).__name__}: {e}")
                continue
            if first is None or (isinstance(first, (dict, list, str)) and not first and variant != "edge"):
                out.append(f"{where}: returned an empty result")
            try:
                text = json.dumps(first, allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError) as e:
                out.append(f"{where}: result is not JSON-serialisable: {e}")
                continue
            if text != json.dumps(second, allow_nan=False, ensure_ascii=False):
                out.append(f"{where}: two calls gave different results (not deterministic)")
    return out


# ---------------------------------------------------------------- requests.json

def template_fields(template: str) -> tuple[list[str], list[str]]:
    """(placeholder names, problems) of one template: only plain {name} placeholders, no other braces."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return [], [f"unbalanced braces ({e})"]
    fields, problems = [], []
    for literal, field, spec, conversion in parsed:
        if "{" in literal or "}" in literal:
            problems.append("literal braces ({{ or }})")
        if field is None:
            continue
        if not re.fullmatch(r"[a-z][a-z0-9_]*", field) or spec or conversion:
            problems.append(f"placeholder {{{field}}} is not a plain {{name}}")
        fields.append(field)
    return fields, list(dict.fromkeys(problems))


def check_templates(tools: list[dict[str, Any]], requests: Any) -> list[str]:
    """4-6 distinct templates per tool; placeholders are the tool's properties and cover the required ones; every
    property appears in some template; some template needs no optional value; no brackets or newlines (the SDG
    drops requests with those)."""
    if not isinstance(requests, dict):
        return ["requests.json must be an object {tool_name: [template, ...]}"]
    names = [_fn(t)["name"] for t in tools]
    out = [f"requests.json: {n} is not a tool" for n in sorted(set(requests) - set(names))]
    lo, hi = TEMPLATES_PER_TOOL
    for tool in tools:
        name = _fn(tool)["name"]
        props, req = set(_props(tool)), set(_required(tool))
        templates = requests.get(name)
        if not isinstance(templates, list) or not all(isinstance(t, str) and t.strip() for t in templates):
            out.append(f"{name}: requests.json needs a list of non-empty template strings")
            continue
        if not lo <= len(templates) <= hi:
            out.append(f"{name}: {len(templates)} templates (want {lo}-{hi})")
        if len({" ".join(t.lower().split()) for t in templates}) != len(templates):
            out.append(f"{name}: duplicate templates")
        used: set[str] = set()
        minimal = False
        for template in templates:
            fields, problems = template_fields(template)
            out += [f"{name}: {template!r}: {p}" for p in problems]
            if any(ch in template for ch in "[]\n\r"):
                out.append(f"{name}: {template!r}: brackets or line breaks")
            if len(set(fields)) != len(fields):
                out.append(f"{name}: {template!r}: a placeholder appears twice")
            if set(fields) - props:
                out.append(f"{name}: {template!r}: {sorted(set(fields) - props)} are not parameters")
            if req - set(fields):
                out.append(f"{name}: {template!r}: misses required {sorted(req - set(fields))}")
            used |= set(fields)
            minimal = minimal or set(fields) <= req
        if props - used:
            out.append(f"{name}: no template mentions {sorted(props - used)}")
        if not minimal:
            out.append(f"{name}: every template needs an optional value; add one with required ones only")
    return out


# ---------------------------------------------------------------- BFCL overlap

def bfcl_data_dir() -> Path | None:
    """bfcl_eval/data of the installed bfcl-eval package (as `herd eval bfcl` finds it), or None."""
    from herd.errors import HerdError
    from herd.eval.tasks.bfcl import default_data_dir

    try:
        path = default_data_dir()
    except HerdError:
        return None
    return path if path.is_dir() else None


def _ngrams(text: str) -> set[tuple[str, ...]]:
    from herd.sdg.filters import words  # the words herd sdg's decontamination compares

    w = words(text)
    return {tuple(w[k:k + NGRAM]) for k in range(len(w) - NGRAM + 1)}


def catalog_texts(tools: list[dict[str, Any]], requests: dict[str, list[str]]) -> Iterator[tuple[str, str]]:
    """(where, text) for every tool and parameter description and every request template (split at its
    placeholders, so no word sequence runs across one)."""
    def props(where: str, schema: dict[str, Any]) -> Iterator[tuple[str, str]]:
        for key, spec in (schema.get("properties") or {}).items():
            yield f"{where}.{key}", spec.get("description", "")
            if spec.get("type") == "object":
                yield from props(f"{where}.{key}", spec)
    for tool in tools:
        fn = _fn(tool)
        yield fn["name"], fn.get("description", "")
        yield from props(fn["name"], fn.get("parameters") or {})
    for name, templates in requests.items():
        for template in templates if isinstance(templates, list) else []:
            for piece in re.split(r"\{[^{}]*\}", str(template)):
                yield f"requests.json {name}: {template!r}", piece


def bfcl_records(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Every JSON object in the *.json files under data_dir (JSON lines, or one JSON document)."""
    for path in sorted(data_dir.rglob("*.json")):
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            try:
                docs = [json.loads(text)]
            except json.JSONDecodeError:
                continue
        for doc in docs:
            yield from (d for d in (doc if isinstance(doc, list) else [doc]) if isinstance(d, dict))


def bfcl_vocabulary(data_dir: Path) -> tuple[set[str], list[str]]:
    """(function names, texts): BFCL function names, and the question texts and function and parameter
    descriptions of every record (a record's `question`, its `function` list, or a record that is itself a
    function document)."""
    names: set[str] = set()
    texts: list[str] = []

    def questions(q: Any) -> None:
        if isinstance(q, str):
            texts.append(q)
        elif isinstance(q, list):
            for item in q:
                questions(item)
        elif isinstance(q, dict) and isinstance(q.get("content"), str):
            texts.append(q["content"])

    def functions(f: Any) -> None:
        if isinstance(f, list):
            for item in f:
                functions(item)
        elif isinstance(f, dict):
            if isinstance(f.get("name"), str):
                names.add(f["name"])
            if isinstance(f.get("description"), str):
                texts.append(f["description"])
            params = f.get("parameters")
            for spec in (params.get("properties") or {}).values() if isinstance(params, dict) else ():
                if isinstance(spec, dict) and isinstance(spec.get("description"), str):
                    texts.append(spec["description"])

    for record in bfcl_records(data_dir):
        questions(record.get("question"))
        functions(record.get("function"))
        if isinstance(record.get("name"), str) and "description" in record:
            functions(record)
    return names, texts


def check_bfcl(tools: list[dict[str, Any]], requests: dict[str, list[str]], data_dir: Path) -> list[str]:
    """No tool name equal to a BFCL function name (whole, or its last dotted part) and no 8-word sequence shared
    between our descriptions or templates and BFCL's questions or descriptions."""
    names, texts = bfcl_vocabulary(data_dir)
    if not names or not texts:
        return [f"{data_dir}: no BFCL functions or questions found (has the data layout changed?)"]
    taken = names | {n.rsplit(".", 1)[-1] for n in names}
    out = [f"{_fn(t)['name']}: same name as a BFCL function" for t in tools if _fn(t)["name"] in taken]
    ours: dict[tuple[str, ...], str] = {}
    for where, text in catalog_texts(tools, requests):
        for gram in _ngrams(text):
            ours.setdefault(gram, where)
    hits: dict[tuple[str, ...], str] = {}
    for text in texts:
        for gram in _ngrams(text) & ours.keys():
            hits.setdefault(gram, text)
    out += [f"{ours[g]}: shares {' '.join(g)!r} with BFCL text {t[:100]!r}" for g, t in sorted(hits.items())]
    return out + check_decontamination(requests)


def check_decontamination(requests: dict[str, list[str]]) -> list[str]:
    """Each template, its placeholders filled, passes the filter `herd sdg tools` applies (herd.sdg.filters'
    Decontaminator against the HumanEval and BFCL prompts: a shared 8-word sequence, or a whole short prompt
    such as BFCL's "what time is it"), so the recipe's --fail-on-contamination cannot trip on a phrasing."""
    from herd.sdg.evalsets import eval_prompts
    from herd.sdg.filters import Decontaminator

    decon = Decontaminator(eval_prompts(["humaneval", "bfcl"]))
    out = []
    for name, templates in requests.items():
        for i, t in enumerate(templates):
            fields, _ = template_fields(t)
            hit = decon.overlap(t.format(**{f: "value" for f in fields}))
            if hit is not None:
                out.append(f"requests.json {name}[{i}] {t!r}: contains the evaluation text {hit!r}")
    return out


# ---------------------------------------------------------------- summary

def type_counts(tools: list[dict[str, Any]]) -> Counter:
    """How often each kind of parameter occurs (nested properties included)."""
    counts: Counter = Counter()

    def walk(schema: dict[str, Any], required: list[str]) -> None:
        for key, spec in (schema.get("properties") or {}).items():
            kind = spec.get("type")
            if kind == "array":
                kind = f"array[{(spec.get('items') or {}).get('type')}{'-enum' if 'enum' in spec['items'] else ''}]"
            counts["enum" if "enum" in spec else kind] += 1
            counts["optional" if key not in required else "required"] += 1
            if spec.get("type") == "object":
                walk(spec, spec.get("required") or [])
    for tool in tools:
        walk(_params(tool), _required(tool))
        counts["no-parameter tools"] += not _props(tool)
    return counts


def summary(tools: list[dict[str, Any]], requests: dict[str, list[str]], bfcl: str) -> str:
    types = ", ".join(f"{k} {v}" for k, v in sorted(type_counts(tools).items()))
    n_templates = sum(len(v) for v in requests.values() if isinstance(v, list))
    return (f"tools-default catalog: {len(tools)} tools, {len([d for d in DOMAINS if DOMAINS[d]])} domains, "
            f"{n_templates} templates; types: {types}; BFCL: {bfcl}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if set(argv) - {"--no-bfcl"}:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        tools, stubs, requests = load()
    except Exception as e:  # noqa: BLE001 - report any load failure as a problem
        print(f"cannot load the catalog: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    problems = check_tools(tools) + check_grammar(tools) + check_domains(tools) + check_signatures(tools, stubs)
    problems += check_templates(tools, requests) + check_runs(tools, stubs)
    data_dir = bfcl_data_dir()
    if "--no-bfcl" in argv:
        bfcl = "not checked (--no-bfcl)"
    elif data_dir is None:
        problems.append("bfcl_eval is not installed: cannot check BFCL overlap (pass --no-bfcl to skip)")
        bfcl = "not installed"
    else:
        found = check_bfcl(tools, requests if isinstance(requests, dict) else {}, data_dir)
        problems += found
        bfcl = "no overlap" if not found else f"{len(found)} overlaps"
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(summary(tools, requests if isinstance(requests, dict) else {}, bfcl)
          + (f"; {len(problems)} problems" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for `herd`
    sys.exit(main())
