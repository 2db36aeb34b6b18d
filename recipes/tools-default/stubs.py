"""Stub implementations of the tools in tools.json, for `herd sdg tools --stubs stubs.py`.

One public function per tool, keyword arguments matching its schema (optional ones with a default). Each returns
a small, plausible, JSON-serialisable result that depends only on its arguments: numbers come from a hash of the
arguments (no randomness, clock, files or network), and any value valid under the schema is accepted. Helpers
start with `_`, so the stub loader skips them.
"""
from __future__ import annotations

import datetime as _dt
import hashlib as _hashlib
import json as _json
import math as _math

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SKIES = ("sunny", "partly cloudy", "overcast", "light rain", "showers", "clear", "windy", "foggy")


def _h(*parts) -> int:
    """A stable integer from the arguments (Python's hash() changes between runs)."""
    raw = _json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return int(_hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12], 16)


def _num(lo: float, hi: float, *parts, nd: int = 1):
    """A number in [lo, hi] picked by the arguments; nd=0 gives an int."""
    x = lo + (hi - lo) * (_h(*parts) % 10_001) / 10_000
    return int(round(x)) if nd == 0 else round(x, nd)


def _pick(options, *parts):
    return options[_h(*parts) % len(options)]


def _ident(prefix: str, *parts) -> str:
    return f"{prefix}-{_h(*parts) % 900_000 + 100_000}"


def _f(x, lo: float = -1e9, hi: float = 1e9) -> float:
    """A schema number as a float, clamped so that arithmetic never overflows."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if v != v else min(max(v, lo), hi)


def _n(x, lo: int, hi: int) -> int:
    """A schema integer clamped to a sensible range (counts, days, sizes)."""
    return int(min(max(_f(x, lo, hi), lo), hi))


def _r(x: float, nd: int = 2) -> float:
    return round(x, nd)


def _date(text, default: str = "2025-06-02") -> _dt.date:
    for value in (text, default):
        try:
            return _dt.date.fromisoformat(str(value)[:10])
        except ValueError:
            continue
    return _dt.date(2025, 6, 2)


def _words(items) -> list[str]:
    return [str(x) for x in (items or [])]


def _name(text, fallback: str) -> str:
    text = " ".join(str(text or "").split())
    return text[:60] if text else fallback


# ---------------------------------------------------------------- weather

def check_weather_now(city, unit="celsius"):
    c = _num(-5, 33, city, "now")
    temp = c if unit != "fahrenheit" else _r(c * 9 / 5 + 32, 1)
    return {"city": _name(city, "your city"), "temperature": temp, "unit": unit or "celsius",
            "conditions": _pick(_SKIES, city, "sky"), "wind_kmh": _num(0, 45, city, "wind", nd=0)}


def get_multi_day_forecast(city, days, unit="celsius"):
    out = []
    for d in range(_n(days, 1, 10)):
        hi = _num(2, 34, city, d, "hi")
        lo = _r(hi - _num(3, 11, city, d, "lo"), 1)
        if unit == "fahrenheit":
            hi, lo = _r(hi * 9 / 5 + 32, 1), _r(lo * 9 / 5 + 32, 1)
        out.append({"day": d + 1, "high": hi, "low": lo, "conditions": _pick(_SKIES, city, d)})
    return {"city": _name(city, "your city"), "unit": unit or "celsius", "days": out}


def check_air_pollution(city):
    aqi = _num(8, 180, city, "aqi", nd=0)
    level = "good" if aqi <= 50 else "moderate" if aqi <= 100 else "unhealthy for sensitive groups"
    return {"city": _name(city, "your city"), "aqi": aqi, "level": level,
            "main_pollutant": _pick(("PM2.5", "PM10", "ozone", "NO2"), city)}


def get_uv_level(city, date=None):
    uv = _num(0, 11, city, date, nd=0)
    risk = "low" if uv <= 2 else "moderate" if uv <= 5 else "high" if uv <= 7 else "very high"
    return {"city": _name(city, "your city"), "date": date or "today", "uv_index": uv, "risk": risk,
            "sunscreen_advised": uv >= 3}


def get_rain_chance(city, hours=12):
    return {"city": _name(city, "your city"), "hours": _n(hours, 1, 72),
            "chance_percent": _num(0, 100, city, hours, nd=0), "expected_mm": _num(0, 12, city, hours, "mm")}


def get_sun_times(city, date=None):
    rise = _num(300, 480, city, date, nd=0)
    length = _num(540, 960, city, date, "len", nd=0)
    setting = min(rise + length, 23 * 60 + 59)
    return {"city": _name(city, "your city"), "date": date or "today", "sunrise": f"{rise // 60:02d}:{rise % 60:02d}",
            "sunset": f"{setting // 60:02d}:{setting % 60:02d}"}


def get_pollen_count(city, pollen_type=None):
    kind = pollen_type or _pick(("grass", "tree", "weed"), city)
    return {"city": _name(city, "your city"), "pollen_type": kind, "grains_per_m3": _num(5, 300, city, kind, nd=0),
            "level": _pick(("low", "moderate", "high", "very high"), city, kind)}


# ---------------------------------------------------------------- travel

def search_flight_options(origin, destination, departure_date, passengers=1, cabin="economy"):
    seats = _n(passengers, 1, 9)
    base = {"economy": 1.0, "premium": 1.7, "business": 3.4, "first": 5.5}.get(cabin, 1.0)
    flights = []
    for k in range(2):
        dep = _num(360, 1260, origin, destination, departure_date, k, nd=0)
        flights.append({"flight": f"{_pick(('HX', 'NV', 'QL', 'TR'), origin, k)}{_num(100, 999, destination, k, nd=0)}",
                        "departs": f"{dep // 60:02d}:{dep % 60:02d}", "stops": _num(0, 1, origin, k, nd=0),
                        "price_total": _r(_num(60, 420, origin, destination, k) * base * seats)})
    return {"from": _name(origin, "origin"), "to": _name(destination, "destination"), "date": departure_date,
            "cabin": cabin or "economy", "options": flights}


def look_up_flight_status(flight_number, date=None):
    delay = _pick((0, 0, 0, 15, 35, 70), flight_number, date)
    return {"flight": _name(flight_number, "flight"), "date": date or "today",
            "status": "on time" if delay == 0 else f"delayed {delay} min",
            "gate": f"{_pick('ABCDE', flight_number)}{_num(1, 40, flight_number, nd=0)}"}


def search_hotel_rooms(city, check_in, nights, max_price_per_night=None, amenities=None):
    cap = _f(max_price_per_night, 0, 1e6) if max_price_per_night is not None else None
    hotels = []
    for k in range(3):
        price = _num(55, 320, city, check_in, k)
        if cap is not None and cap > 0:
            price = min(price, _r(cap * (0.7 + 0.1 * k)))
        hotels.append({"hotel_id": _ident("H", city, k),
                       "name": f"{_pick(('The Linden', 'Harbour', 'Old Mill', 'Station'), city, k)} "
                       f"{_pick(('Hotel', 'Inn', 'Suites'), city, k, 'kind')}", "price_per_night": price,
                       "rating": _num(3.2, 4.9, city, k), "amenities": _words(amenities)[:3]})
    return {"city": _name(city, "your city"), "check_in": check_in, "nights": _n(nights, 1, 60), "hotels": hotels}


def reserve_hotel_room(hotel_id, check_in, nights, guests=1):
    n = _n(nights, 1, 60)
    nightly = _num(60, 280, hotel_id)
    return {"confirmation": _ident("RES", hotel_id, check_in, nights), "hotel_id": hotel_id, "check_in": check_in,
            "nights": n, "guests": _n(guests, 1, 12), "total_price": _r(nightly * n)}


def check_visa_rules(passport_country, destination_country, stay_days=None):
    free = _num(0, 3, passport_country, destination_country, nd=0) > 0
    allowed = _pick((30, 60, 90, 180), passport_country, destination_country)
    ok = free and (stay_days is None or _f(stay_days) <= allowed)
    return {"passport": _name(passport_country, "your passport"), "destination": _name(destination_country, "there"),
            "visa_required": not ok, "visa_free_days": allowed if free else 0,
            "note": "An e-visa can be requested online." if not ok else "Passport must be valid for the whole stay."}


def book_rental_car(pickup_city, pickup_date, days, car_class="compact"):
    daily = {"compact": 32, "midsize": 45, "suv": 68, "van": 80}.get(car_class, 40) + _num(0, 15, pickup_city, nd=0)
    n = _n(days, 1, 90)
    return {"booking": _ident("CAR", pickup_city, pickup_date, days), "city": _name(pickup_city, "your city"),
            "pickup_date": pickup_date, "days": n, "car_class": car_class or "compact", "total_price": daily * n}


def estimate_trip_budget(destination, days, travelers, comfort="standard"):
    t = travelers if isinstance(travelers, dict) else {}
    people = _n(t.get("adults", 1), 0, 50) + 0.5 * _n(t.get("children", 0), 0, 50)
    factor = {"budget": 0.6, "standard": 1.0, "luxury": 2.2}.get(comfort, 1.0) * _n(days, 1, 365) * max(people, 1)
    lodging, food, fun = (_r(_num(lo, hi, destination, k) * factor) for k, (lo, hi) in
                          enumerate(((40, 90), (20, 45), (10, 40))))
    return {"destination": _name(destination, "destination"), "lodging": lodging, "food": food, "activities": fun,
            "total": _r(lodging + food + fun), "currency": "EUR"}


# ---------------------------------------------------------------- finance

def convert_money(amount, from_currency, to_currency):
    same = str(from_currency).upper() == str(to_currency).upper()
    rate = 1.0 if same else _num(0.05, 4.0, str(from_currency).upper(), str(to_currency).upper(), nd=4)
    return {"amount": amount, "from": from_currency, "to": to_currency, "rate": rate,
            "converted": _r(_f(amount) * rate)}


def get_stock_quote(symbol):
    price = _num(4, 900, str(symbol).upper(), nd=2)
    change = _num(-4.5, 4.5, str(symbol).upper(), "chg", nd=2)
    return {"symbol": str(symbol).upper(), "price": price, "change_percent": change, "currency": "USD"}


def _annuity(principal: float, annual_rate: float, months: int) -> float:
    r = annual_rate / 1200
    return principal / months if abs(r) < 1e-12 else principal * r / (1 - (1 + r) ** -months)


def estimate_loan_payment(principal, annual_rate, years):
    p, rate, months = _f(principal, 0, 1e9), _f(annual_rate, 0, 60), _n(years, 1, 50) * 12
    monthly = _annuity(p, rate, months)
    return {"monthly_payment": _r(monthly), "total_paid": _r(monthly * months),
            "total_interest": _r(monthly * months - p)}


def split_restaurant_bill(total, people, tip_percent=0):
    t = _f(total, 0, 1e7) * (1 + _f(tip_percent, 0, 100) / 100)
    n = _n(people, 1, 1000)
    return {"total_with_tip": _r(t), "people": n, "each_pays": _r(t / n)}


def record_expense(amount, category, note=""):
    return {"entry_id": _ident("EXP", amount, category, note), "amount": amount, "category": category,
            "note": note or "", "spent_this_month": _r(_f(amount, 0, 1e7) + _num(20, 600, category))}


def project_savings_growth(monthly_deposit, annual_rate, years):
    d, r, months = _f(monthly_deposit, 0, 1e7), _f(annual_rate, 0, 30) / 1200, _n(years, 1, 60) * 12
    value = d * months if r == 0 else d * ((1 + r) ** months - 1) / r
    return {"final_value": _r(value), "total_deposited": _r(d * months), "interest_earned": _r(value - d * months)}


def create_monthly_budget(month, limits):
    lim = {k: _r(_f(v, 0, 1e9)) for k, v in (limits if isinstance(limits, dict) else {}).items()}
    return {"budget_id": _ident("BUD", month, lim), "month": month, "limits": lim, "total_limit": _r(sum(lim.values()))}


def list_recent_transactions(count=10, min_amount=None):
    floor = _f(min_amount, 0, 1e6) if min_amount is not None else 0.0
    shops = ("Corner Grocer", "City Transit", "Bean Bar", "PowerCo", "Bookworm", "Fuel Stop", "Streamly")
    n = _n(count if count is not None else 10, 1, 10)
    return [{"date": f"2025-05-{28 - k:02d}", "merchant": _pick(shops, k, floor),
             "amount": _r(floor + _num(2, 120, k, floor))} for k in range(n)]


# ---------------------------------------------------------------- shopping

def search_store_catalog(query, max_price=None, sort_by="relevance"):
    cap = _f(max_price, 0, 1e7) if max_price is not None else 500.0
    items = [{"product_id": _ident("P", query, k),
              "name": f"{_name(query, 'item')} {_pick(('Basic', 'Pro', 'Lite', 'Plus'), query, k)}",
              "price": _r(max(cap, 1) * _num(0.3, 1.0, query, k, nd=3)), "rating": _num(3.0, 5.0, query, k)}
             for k in range(3)]
    if sort_by in ("cheapest", "priciest"):
        items.sort(key=lambda x: x["price"], reverse=sort_by == "priciest")
    elif sort_by == "rating":
        items.sort(key=lambda x: -x["rating"])
    return {"query": query, "results": items}


def add_item_to_cart(product_id, quantity):
    q = _n(quantity, 0, 999)
    unit = _num(3, 150, product_id)
    return {"product_id": product_id, "quantity": q, "unit_price": unit, "line_total": _r(unit * q),
            "cart_items": q + 2}


def view_shopping_cart():
    return {"items": [{"name": "Ceramic mug", "quantity": 2, "price": 9.5},
                      {"name": "Notebook A5", "quantity": 1, "price": 4.25}], "total": 23.25}


def track_parcel(tracking_number, carrier="other"):
    status = _pick(("in transit", "out for delivery", "at local depot", "delivered"), tracking_number)
    return {"tracking_number": tracking_number, "carrier": carrier or "other", "status": status,
            "last_location": _pick(("Leeds hub", "Lyon depot", "Newark facility", "Utrecht centre"), tracking_number),
            "expected": f"2025-06-{_num(3, 9, tracking_number, nd=0):02d}"}


def compare_store_prices(product_name, stores):
    offers = [{"store": st, "price": _num(15, 90, product_name, st)} for st in _words(stores)[:8]]
    best = min(offers, key=lambda o: o["price"]) if offers else None
    return {"product": _name(product_name, "product"), "offers": offers, "cheapest": best["store"] if best else None}


def redeem_coupon_code(code, cart_total):
    pct = _pick((0, 10, 15, 20), str(code).upper())
    total = _f(cart_total, 0, 1e8)
    return {"code": code, "valid": pct > 0, "discount_percent": pct, "new_total": _r(total * (1 - pct / 100))}


def start_product_return(order_id, reason, comment=""):
    return {"return_id": _ident("RET", order_id, reason), "order_id": order_id, "reason": reason,
            "label": "prepaid label emailed", "refund_expected_days": _num(3, 10, order_id, nd=0)}


def set_price_alert(product_name, target_price):
    return {"alert_id": _ident("ALERT", product_name, target_price), "product": _name(product_name, "product"),
            "target_price": target_price, "current_price": _r(_f(target_price, 0, 1e8) * _num(1.05, 1.6, product_name))}


# ---------------------------------------------------------------- calendar

def add_calendar_event(title, date, start_time, duration_minutes=60, repeat=None):
    rep = repeat if isinstance(repeat, dict) else {}
    return {"event_id": _ident("EV", title, date, start_time), "title": _name(title, "event"), "date": date,
            "start_time": start_time, "duration_minutes": _n(duration_minutes, 1, 1440),
            "repeats": f"{rep.get('frequency', 'weekly')} x{_n(rep.get('occurrences', 1), 1, 500)}" if rep else "no"}


def show_agenda(date):
    titles = ("Team stand-up", "Dentist", "Lunch with Sam", "Budget review", "Yoga class", "Call with supplier")
    k = _num(0, 3, date, nd=0)
    return {"date": date,
            "events": [{"time": f"{9 + 2 * j:02d}:00", "title": _pick(titles, date, j)} for j in range(k)]}


def cancel_calendar_event(event_id, notify_attendees=True):
    return {"event_id": event_id, "cancelled": True,
            "attendees_notified": _num(0, 6, event_id, nd=0) if notify_attendees else 0}


def find_open_time_slot(date, duration_minutes, earliest_hour=8):
    start = min(max(_n(earliest_hour if earliest_hour is not None else 8, 0, 23), 0) + _num(0, 4, date, nd=0), 23)
    length = _n(duration_minutes, 5, 600)
    end = min(start * 60 + length, 24 * 60 - 1)
    return {"date": date, "start": f"{start:02d}:00", "end": f"{end // 60:02d}:{end % 60:02d}",
            "duration_minutes": length}


def create_reminder(text, remind_at):
    return {"reminder_id": _ident("REM", text, remind_at), "text": _name(text, "reminder"), "remind_at": remind_at,
            "status": "scheduled"}


def list_public_holidays(country, year):
    y = _n(year, 1900, 2200)
    names = ("New Year's Day", "Spring Holiday", "Labour Day", "National Day", "Harvest Day", "Christmas Day")
    picks = [(1, 1), (4, _num(1, 28, country, y, nd=0)), (5, 1), (_num(6, 9, country, nd=0), 14),
             (10, _num(1, 28, country, y, "h", nd=0)), (12, 25)]
    return {"country": _name(country, "country"), "year": y,
            "holidays": [{"date": f"{y}-{m:02d}-{d:02d}", "name": nm} for (m, d), nm in zip(picks, names)]}


def invite_people_to_event(event_id, emails, message=""):
    sent = _words(emails)
    return {"event_id": event_id, "invited": sent, "invitations_sent": len(sent), "message_included": bool(message)}


# ---------------------------------------------------------------- messaging

def compose_email(to, subject, body, cc=None):
    return {"message_id": _ident("MSG", to, subject), "to": to, "subject": subject, "cc": _words(cc), "status": "sent"}


def search_mailbox(query, unread_only=False, max_results=5):
    senders = ("Alex Moreau", "HR Team", "Priya Natarajan", "Billing", "Tom Becker")
    n = min(_num(0, 4, query, nd=0), _n(max_results if max_results is not None else 5, 0, 50))
    matches = [{"email_id": _ident("EM", query, k), "from": _pick(senders, query, k),
                "subject": f"Re: {_name(query, 'your question')}", "unread": bool(unread_only) or k == 0}
               for k in range(n)]
    return {"query": query, "matches": matches}


def send_sms(phone_number, message):
    return {"to": phone_number, "characters": len(str(message)),
            "segments": max(1, _math.ceil(len(str(message)) / 160)), "status": "delivered"}


def get_unread_count():
    return {"unread": 7, "from_contacts": 3, "oldest_unread": "2025-05-29"}


def write_reply_draft(email_id, tone):
    openings = {"friendly": "Hi there, thanks so much for your note!",
                "formal": "Dear colleague, thank you for your message.",
                "brief": "Thanks, noted."}
    return {"draft_id": _ident("DRAFT", email_id, tone), "in_reply_to": email_id, "tone": tone,
            "preview": openings.get(tone, "Thank you for your message.")}


def post_team_chat_message(channel, text):
    return {"channel": channel, "posted": True, "message_id": _ident("CHAT", channel, text),
            "members_online": _num(1, 40, channel, nd=0)}


def set_out_of_office(start_date, end_date, message):
    days = (_date(end_date) - _date(start_date)).days + 1
    return {"active_from": start_date, "active_until": end_date, "days": max(days, 0),
            "auto_reply": _name(message, "away")}


# ---------------------------------------------------------------- maps

def find_places_nearby(place_type, location, radius_km=2.0, open_now=False):
    radius = _f(radius_km if radius_km is not None else 2.0, 0.1, 100)
    names = ("Green Corner", "Main Street", "Riverside", "Central", "Parkview")
    return {"near": _name(location, "you"), "places": [
        {"name": f"{_pick(names, place_type, location, k)} {_name(place_type, 'place').title()}",
         "distance_km": _r(radius * _num(0.1, 0.95, location, k, nd=3)), "open_now": True if open_now else k != 1,
         "rating": _num(3.4, 4.9, place_type, location, k)} for k in range(3)]}


def plan_route(origin, destination, mode):
    km = _num(1, 40, origin, destination)
    speed = {"driving": 40, "walking": 5, "cycling": 16, "transit": 25}.get(mode, 30)
    via = _pick(("the ring road", "Market Street", "the riverside path"), origin, destination)
    return {"from": _name(origin, "start"), "to": _name(destination, "end"), "mode": mode, "distance_km": km,
            "duration_minutes": max(1, round(km / speed * 60)), "via": via}


def lookup_coordinates(address):
    return {"address": _name(address, "address"), "latitude": _num(-60, 70, address, "lat", nd=5),
            "longitude": _num(-179, 179, address, "lon", nd=5)}


def measure_distance(from_place, to_place, unit="km"):
    km = _num(2, 2500, *sorted([str(from_place), str(to_place)]))
    factor = 0.621371 if unit == "miles" else 1.0
    return {"from": from_place, "to": to_place, "unit": unit or "km", "straight_line": _r(km * factor, 1),
            "by_road": _r(km * 1.25 * factor, 1)}


def find_parking_spots(location, max_hourly_rate=None):
    cap = _f(max_hourly_rate, 0, 1000) if max_hourly_rate is not None else 6.0
    return [{"name": f"{_pick(('Station', 'Market', 'Civic', 'Harbour'), location, k)} car park",
             "hourly_rate": _r(max(cap, 0.5) * _num(0.4, 1.0, location, k, nd=3)),
             "free_spaces": _num(0, 120, location, k, nd=0), "walk_minutes": _num(1, 12, location, k, "w", nd=0)}
            for k in range(2)]


def get_city_clock_time(city):
    offset = _num(-10, 12, city, nd=0)
    minutes = _num(0, 1439, city, "t", nd=0)
    return {"city": _name(city, "city"), "local_time": f"{minutes // 60:02d}:{minutes % 60:02d}",
            "utc_offset": f"UTC{offset:+d}"}


# ---------------------------------------------------------------- cooking

def suggest_recipes(ingredients, cuisine=None, max_minutes=None):
    have = _words(ingredients) or ["pantry staples"]
    dishes = ("traybake", "stir-fry", "frittata", "soup", "pasta bake", "salad", "curry")
    limit = _n(max_minutes, 5, 600) if max_minutes is not None else 60
    return [{"name": f"{(cuisine + ' ') if cuisine else ''}{have[0]} {_pick(dishes, have, k)}".strip(),
             "minutes": min(limit, _num(10, 60, have, k, nd=0)), "uses": have[:3]} for k in range(2)]


def scale_recipe_servings(recipe_name, servings):
    base = _num(2, 6, recipe_name, nd=0)
    factor = _n(servings, 1, 500) / base
    return {"recipe": _name(recipe_name, "recipe"), "original_servings": base, "servings": _n(servings, 1, 500),
            "ingredients": [{"item": "flour", "grams": _r(250 * factor, 0)},
                            {"item": "butter", "grams": _r(100 * factor, 0)},
                            {"item": "eggs", "count": max(1, round(2 * factor))}]}


def get_food_nutrition(food, grams):
    g = _f(grams, 0, 1e5) / 100
    return {"food": _name(food, "food"), "grams": grams, "calories": _r(_num(20, 550, food, nd=0) * g, 0),
            "protein_g": _r(_num(0, 30, food, "p") * g, 1), "fat_g": _r(_num(0, 40, food, "f") * g, 1),
            "carbs_g": _r(_num(0, 70, food, "c") * g, 1)}


def pair_wine_with_dish(dish):
    wines = ("Pinot Noir", "Sauvignon Blanc", "Chianti", "Riesling", "Malbec", "Chardonnay", "Rioja", "Albarino")
    return {"dish": _name(dish, "dish"), "suggestions": [_pick(wines, dish, 0), _pick(wines, dish, 1)],
            "serve_at_celsius": _num(8, 18, dish, nd=0)}


_KITCHEN_ML = {"cup": 240.0, "tablespoon": 15.0, "teaspoon": 5.0, "gram": 1.0, "ounce": 28.35, "milliliter": 1.0}


def convert_kitchen_measure(quantity, from_unit, to_unit):
    value = _f(quantity, -1e9, 1e9) * _KITCHEN_ML.get(from_unit, 1.0) / _KITCHEN_ML.get(to_unit, 1.0)
    return {"quantity": quantity, "from": from_unit, "to": to_unit, "result": _r(value),
            "note": "gram/volume conversions assume a density like water"}


def start_cooking_timer(minutes, label="timer"):
    return {"timer_id": _ident("TMR", minutes, label), "minutes": _n(minutes, 0, 1440), "label": label or "timer",
            "status": "running"}


def find_ingredient_substitute(ingredient, diet=None):
    options = ("Greek yoghurt", "apple sauce", "coconut milk", "chickpea water", "olive oil", "oat milk", "lemon juice",
               "mashed banana", "nutritional yeast", "cornflour")
    return {"ingredient": _name(ingredient, "ingredient"), "diet": diet or "any",
            "substitutes": [_pick(options, ingredient, diet, k) for k in range(2)], "ratio": "1:1"}


# ---------------------------------------------------------------- health

def log_exercise_session(activity, minutes, distance_km=None):
    m = _n(minutes, 0, 1440)
    return {"entry_id": _ident("WK", activity, minutes, distance_km), "activity": activity, "minutes": m,
            "distance_km": distance_km, "calories": round(m * _num(4, 11, activity)), "week_total_minutes": m + 95}


def estimate_burned_calories(activity, minutes, weight_kg):
    met = _num(2.5, 10, str(activity).lower())
    kcal = met * _f(weight_kg, 0, 500) * _n(minutes, 0, 1440) / 60
    return {"activity": _name(activity, "activity"), "calories": round(kcal), "met": met}


def log_water_drunk(milliliters):
    total = _n(milliliters, 0, 20000) + 900
    return {"logged_ml": milliliters, "today_total_ml": total, "goal_ml": 2000, "goal_met": total >= 2000}


def get_sleep_report(nights=7):
    n = _n(nights if nights is not None else 7, 1, 60)
    return {"nights": n, "average_hours": _num(5.5, 8.2, n), "average_bedtime": f"23:{_num(0, 59, n, nd=0):02d}",
            "deep_sleep_percent": _num(12, 25, n, nd=0)}


def record_blood_pressure(systolic, diastolic, note=""):
    s, d = _n(systolic, 0, 400), _n(diastolic, 0, 300)
    category = "normal" if s < 120 and d < 80 else "elevated" if s < 130 and d < 80 else "high"
    return {"reading": f"{s}/{d}", "category": category, "note": note or "", "saved": True}


def get_today_steps():
    return {"steps": 6842, "goal": 10000, "distance_km": 5.1, "percent_of_goal": 68}


def set_medication_reminder(medicine, times, with_food=False):
    return {"reminder_id": _ident("MED", medicine, times), "medicine": _name(medicine, "medicine"),
            "times": _words(times),
            "with_food": bool(with_food), "doses_per_day": len(_words(times))}


def compute_heart_rate_zones(age, resting_heart_rate=60):
    hr_max = 220 - _n(age, 1, 120)
    rest = _n(resting_heart_rate if resting_heart_rate is not None else 60, 30, 120)
    reserve = max(hr_max - rest, 1)
    zones = [(name, round(rest + reserve * lo), round(rest + reserve * hi)) for name, lo,
             hi in (("easy", 0.5, 0.6), ("aerobic", 0.6, 0.7), ("tempo", 0.7, 0.8), ("threshold", 0.8, 0.9),
                    ("max", 0.9, 1.0))]
    return {"max_heart_rate": hr_max, "zones": [{"zone": z, "from_bpm": a, "to_bpm": b} for z, a, b in zones]}


# ---------------------------------------------------------------- math and units

_METERS = {"km": 1000.0, "mile": 1609.344, "meter": 1.0, "foot": 0.3048, "inch": 0.0254, "yard": 0.9144}
_GRAMS = {"kg": 1000.0, "lb": 453.59237, "gram": 1.0, "ounce": 28.349523, "stone": 6350.29318}


def convert_distance_units(value, from_unit, to_unit):
    out = _f(value) * _METERS.get(from_unit, 1.0) / _METERS.get(to_unit, 1.0)
    return {"value": value, "from": from_unit, "to": to_unit, "result": _r(out, 4)}


def convert_temperature_scale(value, from_scale, to_scale):
    v = _f(value)
    c = v if from_scale == "celsius" else (v - 32) * 5 / 9 if from_scale == "fahrenheit" else v - 273.15
    out = c if to_scale == "celsius" else c * 9 / 5 + 32 if to_scale == "fahrenheit" else c + 273.15
    return {"value": value, "from": from_scale, "to": to_scale, "result": _r(out)}


def compute_percentage_of(percent, value):
    return {"percent": percent, "of": value, "result": _r(_f(percent) * _f(value) / 100, 4)}


def average_numbers(numbers):
    xs = [_f(x) for x in numbers or []]
    if not xs:
        return {"count": 0, "mean": None, "min": None, "max": None}
    return {"count": len(xs), "mean": _r(sum(xs) / len(xs), 4), "min": min(xs), "max": max(xs)}


def round_to_decimals(value, decimals):
    return {"value": value, "decimals": _n(decimals, 0, 12),
            "result": round(_f(value, -1e15, 1e15), _n(decimals, 0, 12))}


def count_days_between(start_date, end_date, include_end=False):
    days = (_date(end_date) - _date(start_date)).days
    return {"from": start_date, "to": end_date, "days": days + (1 if include_end and days >= 0 else 0),
            "weeks": _r(days / 7, 1)}


def convert_weight_units(value, from_unit, to_unit):
    out = _f(value) * _GRAMS.get(from_unit, 1.0) / _GRAMS.get(to_unit, 1.0)
    return {"value": value, "from": from_unit, "to": to_unit, "result": _r(out, 4)}


def compute_percent_change(old_value, new_value):
    old, new = _f(old_value), _f(new_value)
    if old == 0:
        return {"old": old_value, "new": new_value, "change": _r(new - old), "percent_change": None,
                "note": "undefined from zero"}
    return {"old": old_value, "new": new_value, "change": _r(new - old),
            "percent_change": _r((new - old) / abs(old) * 100)}


# ---------------------------------------------------------------- sports

_OPPONENTS = ("Northbridge United", "Eastport Rovers", "Valley Athletic", "Harbour City", "Redhill Town", "Lakeside FC")


def get_latest_match_result(team, competition=None):
    gf, ga = _num(0, 4, team, "f", nd=0), _num(0, 4, team, "a", nd=0)
    return {"team": _name(team, "team"), "opponent": _pick(_OPPONENTS, team), "score": f"{gf}-{ga}",
            "result": "win" if gf > ga else "draw" if gf == ga else "loss", "competition": competition or "league",
            "date": f"2025-05-{_num(20, 31, team, nd=0)}"}


def show_league_table(league, season=None):
    teams = sorted(_OPPONENTS, key=lambda t: _h(league, season, t))[:5]
    return {"league": _name(league, "league"), "season": season or "current",
            "table": [{"position": k + 1, "team": t, "points": 70 - 6 * k - _num(0, 5, league, t, nd=0)}
                      for k, t in enumerate(teams)]}


def look_up_athlete_stats(player_name, season=None):
    who = (player_name, season)
    return {"player": _name(player_name, "player"), "season": season or "current",
            "appearances": _num(5, 38, *who, nd=0), "goals": _num(0, 25, *who, "g", nd=0),
            "assists": _num(0, 14, *who, "a", nd=0), "minutes": _num(300, 3400, *who, nd=0)}


def list_upcoming_games(team, count=5):
    n = _n(count if count is not None else 5, 1, 10)
    start = _date("2025-06-07")
    return [{"date": str(start + _dt.timedelta(days=7 * k)), "opponent": _pick(_OPPONENTS, team, k),
             "home": k % 2 == 0, "kickoff": _pick(("15:00", "17:30", "20:00"), team, k)} for k in range(n)]


def reserve_sports_court(sport, date, time, hours=1):
    h = _n(hours if hours is not None else 1, 1, 12)
    return {"booking": _ident("CRT", sport, date, time), "sport": sport, "court": _num(1, 8, sport, date, time, nd=0),
            "date": date, "time": time, "hours": h, "price": _r(h * _num(8, 24, sport))}


def get_race_calendar(series, year):
    y = _n(year, 1950, 2100)
    venues = ("Melbourne", "Jerez", "Silverstone", "Monza", "Suzuka", "Austin", "Interlagos", "Laguna Seca")
    return {"series": series, "year": y,
            "races": [{"round": k + 1, "venue": _pick(venues, series, y, k),
                       "date": f"{y}-{3 + 2 * k:02d}-{_num(1, 28, series, y, k, nd=0):02d}"} for k in range(4)]}


# ---------------------------------------------------------------- media

def play_music_track(title, artist=None):
    secs = _num(150, 320, title, artist, nd=0)
    return {"now_playing": _name(title, "track"),
            "artist": artist or _pick(("The Lanterns", "Mara Solis", "Blue Harbour"), title),
            "duration": f"{secs // 60}:{secs % 60:02d}", "device": "living room speaker"}


def build_playlist(name, songs, public=False):
    tracks = _words(songs)
    return {"playlist_id": _ident("PL", name, tracks), "name": _name(name, "playlist"), "tracks": len(tracks),
            "public": bool(public), "length_minutes": round(sum(_num(2.5, 5.5, t) for t in tracks), 1)}


def find_cinema_showtimes(movie, city, date=None):
    cinemas = ("Odeon Central", "Picturehouse", "Cineworld Riverside", "Rex")
    return {"movie": _name(movie, "film"), "city": _name(city, "city"), "date": date or "today",
            "showings": [{"cinema": _pick(cinemas, movie, city, k),
                          "times": [f"{_num(13, 17, movie, k, nd=0)}:15",
                                    f"{_num(18, 21, movie, k, nd=0)}:45"]} for k in range(2)]}


def recommend_podcast_episodes(topic, max_minutes=None):
    cap = _n(max_minutes, 5, 600) if max_minutes is not None else 60
    shows = ("Curious Minds", "The Long Walk", "Signal & Noise", "Everyday Science", "Deep Dive Weekly")
    return [{"show": _pick(shows, topic, k), "episode": f"{_name(topic, 'Ideas').title()}, part {k + 1}",
             "minutes": min(cap, _num(15, 70, topic, k, nd=0))} for k in range(3)]


def change_speaker_volume(level, device=None):
    return {"device": device or "active speaker", "volume": _n(level, 0, 100), "muted": _n(level, 0, 100) == 0}


def pause_music():
    return {"status": "paused", "track": "Evening Tide", "position": "1:42"}


def skip_to_next_track():
    return {"status": "playing", "now_playing": "Paper Lanterns", "artist": "Mara Solis"}


def rate_movie(movie_title, stars, review=""):
    return {"movie": _name(movie_title, "film"), "your_rating": _n(stars, 1, 5),
            "average_rating": _num(2.5, 4.8, movie_title), "review_saved": bool(review)}


# ---------------------------------------------------------------- files and development

def search_local_files(query, extension=None):
    ext = str(extension or _pick(("pdf", "docx", "txt", "xlsx"), query)).lstrip(".") or "txt"
    slug = "_".join(str(query).lower().split())[:30] or "untitled"
    return [{"path": f"~/Documents/{slug}{'_v' + str(k + 1) if k else ''}.{ext}",
             "size_kb": _num(4, 900, query, k,
                             nd=0), "modified": f"2025-05-{_num(1, 28, query, k, nd=0):02d}"} for k in range(2)]


def make_directory(path):
    return {"path": path, "created": True, "already_existed": False}


def check_disk_space():
    return {"total_gb": 512, "used_gb": 348.6, "free_gb": 163.4, "percent_used": 68}


def run_test_suite(project, pattern=None, verbose=False):
    total = _num(12, 400, project, pattern, nd=0)
    failed = _pick((0, 0, 0, 1, 2), project, pattern)
    out = {"project": _name(project, "project"), "passed": total - failed, "failed": failed,
           "seconds": _num(1, 90, project, pattern)}
    if verbose or failed:
        out["failures"] = [f"test_{_pick(('parse', 'save', 'login', 'export'), project, k)}_{k}" for k in range(failed)]
    return out


def ping_website(url):
    up = _num(0, 9, url, nd=0) > 0
    return {"url": url, "up": up, "status_code": 200 if up else 503,
            "response_ms": _num(40, 900, url, nd=0) if up else None}


def zip_files(paths, archive_name):
    files = _words(paths)
    size = sum(_num(10, 2000, p, nd=0) for p in files)
    return {"archive": archive_name, "files": len(files), "size_kb": round(size * 0.45), "original_kb": size}


def create_pull_request(repository, title, head_branch, base_branch="main"):
    return {"repository": repository, "number": _num(10, 999, repository, title, nd=0), "title": title,
            "from": head_branch, "into": base_branch or "main", "state": "open"}


def list_open_issues(repository, label=None, limit=5):
    n = _n(limit if limit is not None else 5, 1, 10)
    topics = ("crash on startup", "typo in docs", "slow search", "login fails on mobile", "export drops rows")
    return [{"number": _num(1, 500, repository, k, nd=0), "title": _pick(topics, repository, label, k),
             "label": label or _pick(("bug", "docs", "enhancement"), repository, k)} for k in range(min(n, 4))]


# ---------------------------------------------------------------- home automation

def adjust_thermostat(temperature, mode):
    return {"target": temperature, "mode": mode, "current": _num(15, 24, temperature, mode),
            "eta_minutes": 0 if mode == "off" else _num(5, 40, temperature, nd=0)}


def switch_lights_on(room, brightness=100):
    return {"room": _name(room, "room"), "on": True,
            "brightness": _n(brightness if brightness is not None else 100, 0, 100)}


def switch_lights_off(room):
    return {"room": _name(room, "room"), "on": False, "lights_still_on_elsewhere": _num(0, 4, room, nd=0)}


def lock_doors(doors):
    wanted = _words(doors)
    return {"locked": wanted, "all_secure": True, "not_locked": []}


def start_vacuum_cleaner(rooms=None):
    todo = _words(rooms) or ["whole home"]
    return {"status": "cleaning", "rooms": todo, "estimated_minutes": 15 * len(todo) if rooms else 75,
            "battery_percent": 92}


def view_security_camera(camera):
    events = _num(0, 3, camera, nd=0)
    return {"camera": camera, "snapshot": f"snapshot_{camera}.jpg", "motion_events_last_hour": events,
            "last_motion": f"{_num(10, 59, camera, nd=0)} minutes ago" if events else None}


def activate_home_scene(scene):
    detail = {"movie": "lights 20%, blinds down", "morning": "lights 80%, blinds up, radio on",
              "away": "lights off, doors locked, heating eco", "dinner": "lights 50% warm, music low"}
    return {"scene": scene, "active": True, "changes": detail.get(scene, "applied")}


def get_energy_usage(period):
    ranges = {"day": (4, 18), "week": (50, 120), "month": (220, 480)}
    kwh = _num(*ranges.get(period, (4, 18)), period)
    return {"period": period, "kwh": kwh, "cost": _r(kwh * 0.28),
            "compared_to_previous_percent": _num(-15, 15, period, "c")}


def check_all_sensors():
    return {"doors": "all closed", "windows_open": ["bathroom"], "smoke_alarms": "ok", "water_leak": "none",
            "indoor_temperature": 20.5}


# ---------------------------------------------------------------- education

def look_up_word_meaning(word, language="English"):
    w = _name(word, "word")
    register = _pick(("common", "formal", "literary", "informal"), w, "r")
    return {"word": w, "language": language or "English",
            "part_of_speech": _pick(("noun", "verb", "adjective", "adverb"), w),
            "meaning": f"a {register} word; see the example for its use",
            "example": f"She used the word '{w}' twice in her speech."}


def translate_phrase(text, target_language, source_language=None):
    original = _name(text, "")
    return {"source_language": source_language or "detected: English", "target_language": target_language,
            "original": original, "translation": f"[{target_language}] {original}",
            "confidence": _num(0.7, 0.99, text)}


def find_online_classes(topic, level, free_only=False):
    sites = ("OpenLearn", "Skillshed", "CourseBay", "UniOnline")
    return [{"title": f"{_name(topic, 'General').title()} for {level} learners", "provider": _pick(sites, topic, k),
             "weeks": _num(2, 10, topic, k, nd=0), "price": 0 if free_only or k == 0 else _num(20, 180, topic, k, nd=0)}
            for k in range(2)]


def generate_flashcards(topic, count):
    n = _n(count, 1, 100)
    return {"topic": _name(topic, "topic"), "cards": n,
            "sample": [{"front": f"{_name(topic, 'Topic')}: key idea {k + 1}?", "back": f"Answer {k + 1}"}
                       for k in range(min(n, 2))]}


def check_text_spelling(text, language="English"):
    words = str(text).split()
    wrong = [w for w in words if len(w) > 3 and _h(w) % 7 == 0][:3]
    return {"language": language or "English", "words_checked": len(words), "mistakes": len(wrong),
            "suggestions": [{"word": w, "suggestion": w.lower().rstrip(".,!?")} for w in wrong]}


_ELEMENTS = {"H": ("hydrogen", 1, 1.008), "He": ("helium", 2, 4.003), "C": ("carbon", 6, 12.011),
             "N": ("nitrogen", 7, 14.007), "O": ("oxygen", 8, 15.999), "Na": ("sodium", 11, 22.99),
             "Fe": ("iron", 26, 55.845), "Cu": ("copper", 29, 63.546), "Ag": ("silver", 47, 107.87),
             "Au": ("gold", 79, 196.97)}


def get_chemical_element(symbol):
    key = str(symbol).strip()[:2].capitalize()
    if key not in _ELEMENTS:
        return {"symbol": symbol, "found": False, "hint": "use a symbol such as Fe, O or Au"}
    name, number, mass = _ELEMENTS[key]
    return {"symbol": key, "name": name, "atomic_number": number, "atomic_mass": mass, "found": True}


def calculate_grade_average(scores, weights=None):
    xs = [_f(x) for x in scores or []]
    ws = [_f(w) for w in weights or []]
    if not xs:
        return {"count": 0, "average": None}
    if len(ws) == len(xs) and sum(ws) > 0:
        return {"count": len(xs), "average": _r(sum(x * w for x, w in zip(xs, ws)) / sum(ws)), "weighted": True}
    return {"count": len(xs), "average": _r(sum(xs) / len(xs)), "weighted": False}


# ---------------------------------------------------------------- news

def get_headlines(category, country=None):
    subjects = ("Council", "Researchers", "Markets", "Local team", "Regulator", "Start-up", "Hospital")
    verbs = ("announce new plan", "report record week", "face tough questions", "unveil surprise result")
    lines = [f"{_pick(subjects, category, country, k)} {_pick(verbs, category, country, k)}" for k in range(3)]
    return {"category": category, "edition": country or "international", "headlines": lines}


def search_news_articles(query, days_back=7):
    outlets = ("Daily Ledger", "The Courier", "Metro Wire", "Global Post")
    span = _n(days_back if days_back is not None else 7, 0, 25)
    return [{"title": f"What we know about {_name(query, 'the story')}", "source": _pick(outlets, query, k),
             "published": f"2025-05-{30 - _num(0, span, query, k, nd=0):02d}"} for k in range(2)]


def summarize_web_article(url, max_sentences=3):
    n = _n(max_sentences if max_sentences is not None else 3, 1, 10)
    sentences = ["The article reports a change announced this week.", "Experts quoted expect a modest effect.",
                 "Critics raise concerns about the cost.", "A decision is due next month."]
    return {"url": url, "summary": " ".join(sentences[:n]), "reading_minutes": _num(2, 15, url, nd=0)}


def subscribe_to_newsletter(email, topics):
    return {"email": email, "topics": _words(topics), "frequency": "weekly", "confirmation_sent": True}


def get_trending_topics(region=None):
    pool = ("heatwave", "cup final", "new phone launch", "election debate", "space mission", "film festival",
            "rail strike")
    return {"region": region or "worldwide", "trending": [_pick(pool, region, k) for k in range(3)]}


# ---------------------------------------------------------------- jobs

def search_job_openings(job_title, location, remote_only=False):
    firms = ("Brightline", "Northwind", "Keystone Labs", "Orchard Health", "Tidewater")
    where = "remote" if remote_only else _name(location, "on site")
    return [{"job_id": _ident("JOB", job_title, location, k), "title": _name(job_title, "role").title(),
             "company": _pick(firms, job_title, location, k), "location": where,
             "salary": _num(30_000, 110_000, job_title, location, k, nd=0)} for k in range(3)]


def estimate_market_salary(job_title, city, years_experience):
    base = _num(28_000, 85_000, str(job_title).lower(), str(city).lower(), nd=0)
    median = round(base * (1 + 0.035 * _n(years_experience, 0, 50)))
    return {"job_title": _name(job_title, "role"), "city": _name(city, "city"), "median": median,
            "low": round(median * 0.85), "high": round(median * 1.2), "currency": "EUR"}


def bookmark_job_posting(job_id):
    return {"job_id": job_id, "saved": True, "saved_jobs_total": _num(1, 25, job_id, nd=0)}


def submit_job_application(job_id, resume_file, cover_letter=""):
    return {"application_id": _ident("APP", job_id, resume_file), "job_id": job_id, "resume": resume_file,
            "cover_letter_included": bool(cover_letter), "status": "submitted"}


def get_application_status(application_id):
    stage = _pick(("received", "under review", "interview scheduled", "offer made", "not selected"), application_id)
    return {"application_id": application_id, "stage": stage,
            "updated": f"2025-05-{_num(1, 30, application_id, nd=0):02d}"}


# ---------------------------------------------------------------- real estate

def search_homes_to_buy(city, max_price, min_bedrooms=None, property_type=None):
    cap = _f(max_price, 0, 1e10)
    beds = _n(min_bedrooms if min_bedrooms is not None else 1, 0, 20)
    return [{"listing_id": _ident("L", city, k, cap),
             "type": property_type or _pick(("house", "apartment", "townhouse"), city, k),
             "bedrooms": beds + _num(0, 2, city, k, nd=0), "price": round(cap * _num(0.7, 1.0, city, k, nd=3)),
             "area_m2": _num(45, 210, city, k, nd=0)} for k in range(3)]


def estimate_property_value(address):
    value = _num(150_000, 950_000, address, nd=0)
    return {"address": _name(address, "address"), "estimate": value, "low": round(value * 0.9),
            "high": round(value * 1.1),
            "confidence": _pick(("low", "medium", "high"), address)}


def compute_mortgage_payment(home_price, down_payment, annual_rate, years):
    loan = max(_f(home_price, 0, 1e10) - _f(down_payment, 0, 1e10), 0)
    months = _n(years, 1, 50) * 12
    monthly = _annuity(loan, _f(annual_rate, 0, 60), months)
    return {"loan_amount": _r(loan), "monthly_payment": _r(monthly), "total_interest": _r(monthly * months - loan)}


def find_apartments_to_rent(city, max_rent, pets_allowed=False):
    cap = _f(max_rent, 0, 1e8)
    return [{"listing_id": _ident("R", city, k, cap), "rent": round(cap * _num(0.75, 1.0, city, k, nd=3)),
             "bedrooms": _num(0, 3, city, k, nd=0), "pets_allowed": True if pets_allowed else k == 0,
             "district": _pick(("Old Town", "Riverside", "North Park", "Station Quarter"), city, k)} for k in range(2)]


def book_property_viewing(listing_id, date, time):
    return {"viewing_id": _ident("VIEW", listing_id, date, time), "listing_id": listing_id, "date": date, "time": time,
            "agent": _pick(("Dana Whitfield", "Marco Ruiz", "Ines Kowalski"), listing_id)}


# ---------------------------------------------------------------- pets

def find_vets_nearby(city, emergency_only=False):
    return [{"name": f"{_pick(('Paws', 'Greenfield', 'Riverside', 'Ark'), city, k)} Veterinary Clinic",
             "emergency_24h": True if emergency_only else k == 1, "distance_km": _num(0.5, 9, city, k),
             "phone": f"+1 555 0{_num(100, 199, city, k, nd=0)}"} for k in range(2)]


def log_pet_feeding(pet_name, food, grams):
    total = _n(grams, 0, 10_000) + _num(50, 200, pet_name, nd=0)
    return {"pet": _name(pet_name, "pet"), "food": _name(food, "food"), "grams": grams, "today_total_grams": total}


def get_breed_profile(species, breed):
    return {"species": species, "breed": _name(breed, "breed"), "size": _pick(("small", "medium", "large"), breed),
            "temperament": _pick(("calm and affectionate", "playful and energetic", "loyal and alert"), breed),
            "exercise_minutes_per_day": 0 if species == "cat" else _num(30, 120, breed, nd=0),
            "life_expectancy_years": _num(10, 16, species, breed, nd=0)}


def book_grooming_appointment(pet_name, service, date):
    price = {"bath": 30, "haircut": 45, "nails": 15, "full": 70}.get(service, 40)
    return {"appointment_id": _ident("GRM", pet_name, service, date), "pet": _name(pet_name, "pet"), "service": service,
            "date": date, "time": f"{_num(9, 16, pet_name, date, nd=0)}:00", "price": price}


def convert_pet_age_to_human(species, age_years):
    a = _f(age_years, 0, 100)
    if species == "dog":
        human = 15 * min(a, 1) + 9 * min(max(a - 1, 0), 1) + 5 * max(a - 2, 0)
    elif species == "cat":
        human = 15 * min(a, 1) + 9 * min(max(a - 1, 0), 1) + 4 * max(a - 2, 0)
    else:
        human = 8 * a
    return {"species": species, "age_years": age_years, "human_years": round(human)}


# ---------------------------------------------------------------- gardening

def get_planting_window(plant, hardiness_zone):
    month = ("January", "February", "March", "April", "May", "June", "July", "August", "September")
    start = _num(1, 5, plant, hardiness_zone, nd=0)
    return {"plant": _name(plant, "plant"), "zone": hardiness_zone, "sow_indoors": month[start],
            "plant_out": month[start + 2], "harvest_from": month[min(start + 5, 8)]}


def schedule_garden_watering(zone, days, minutes):
    chosen = _words(days)
    m = _n(minutes, 0, 600)
    return {"zone": _name(zone, "zone"), "days": chosen, "minutes": m, "start_time": "06:00",
            "litres_per_week": round(m * len(chosen) * 9)}


def diagnose_plant_issue(plant, symptoms):
    fixes = {"overwatering": "let the soil dry between waterings", "aphids": "spray with soapy water",
             "nitrogen deficiency": "feed with a balanced fertiliser",
             "powdery mildew": "improve air flow, remove leaves", "sun scorch": "move to partial shade",
             "root rot": "repot in fresh, free-draining soil"}
    cause = _pick(sorted(fixes), plant, sorted(_words(symptoms)))
    return {"plant": _name(plant, "plant"), "likely_cause": cause, "fix": fixes[cause],
            "confidence": _pick(("low", "medium", "high"), plant, _words(symptoms))}


def list_companion_plants(plant):
    pool = ("basil", "marigold", "nasturtium", "chives", "beans", "carrots", "lettuce", "borage", "onions", "fennel")
    good = sorted({_pick(pool, plant, k) for k in range(3)})
    return {"plant": _name(plant, "plant"), "good_neighbours": good,
            "avoid": [p for p in ("fennel", "onions") if p not in good][:1]}


def check_frost_risk(city, nights=3):
    n = _n(nights if nights is not None else 3, 1, 14)
    lows = [_num(-4, 9, city, k) for k in range(n)]
    return {"city": _name(city, "city"), "nights": n, "lowest_celsius": min(lows), "frost_likely": min(lows) <= 0}


def calculate_soil_needed(length_m, width_m, depth_cm):
    litres = _f(length_m, 0, 1e4) * _f(width_m, 0, 1e4) * _f(depth_cm, 0, 1e4) * 10
    return {"cubic_metres": _r(litres / 1000, 3), "litres": round(litres), "bags_of_50_litres": _math.ceil(litres / 50)}


# ---------------------------------------------------------------- transport

def order_taxi_ride(pickup, dropoff, ride_type, passengers=1):
    factor = {"standard": 1.0, "xl": 1.4, "premium": 1.9}.get(ride_type, 1.0)
    return {"ride_id": _ident("RIDE", pickup, dropoff, ride_type), "ride_type": ride_type,
            "passengers": _n(passengers if passengers is not None else 1, 1, 8),
            "driver_eta_minutes": _num(2, 15, pickup, nd=0), "fare_estimate": _r(_num(8, 45, pickup, dropoff) * factor)}


def get_next_departures(stop_name, line=None, limit=3):
    n = _n(limit if limit is not None else 3, 1, 10)
    return [{"line": line or str(_num(1, 99, stop_name, k, nd=0)),
             "towards": _pick(("Central", "Airport", "Harbour", "University"), stop_name,
                              k), "in_minutes": 2 + 7 * k + _num(0, 4, stop_name, k, nd=0)} for k in range(n)]


def find_charging_stations(location, connector=None):
    return [{"name": f"{_pick(('VoltPoint', 'ChargeHub', 'GreenPlug'), location, k)} {_name(location, 'nearby')}",
             "connector": connector or _pick(("ccs", "type2", "chademo"), location, k),
             "power_kw": _pick((22, 50, 150, 350), location, k), "free_points": _num(0, 6, location, k, nd=0),
             "distance_km": _num(0.3, 8, location, k)} for k in range(2)]


def check_fuel_prices(city, fuel_type):
    base = {"petrol": 1.75, "diesel": 1.68, "lpg": 0.85}.get(fuel_type, 1.7)
    stations = [{"station": f"{_pick(('Shellby', 'QuickFuel', 'Roadside', 'Moto'), city, k)} {_name(city, 'town')}",
                 "price_per_litre": _r(base + _num(-0.12, 0.12, city, fuel_type, k, nd=3), 3)} for k in range(3)]
    return {"city": _name(city, "city"), "fuel": fuel_type,
            "stations": sorted(stations, key=lambda s: s["price_per_litre"])}


def buy_train_ticket(from_station, to_station, travel_date, railcard=False):
    price = _num(12, 140, from_station, to_station)
    hour, minute = _num(6, 20, from_station, travel_date, nd=0), _pick(("05", "20", "35", "50"), to_station)
    return {"ticket_id": _ident("TKT", from_station, to_station, travel_date), "from": from_station, "to": to_station,
            "date": travel_date, "departure": f"{hour:02d}:{minute}", "price": _r(price * (2 / 3 if railcard else 1))}


# ---------------------------------------------------------------- restaurants

def reserve_restaurant_table(restaurant, date, time, party_size):
    return {"booking_id": _ident("TBL", restaurant, date, time, party_size),
            "restaurant": _name(restaurant, "restaurant"), "date": date, "time": time,
            "party_size": _n(party_size, 1, 100), "table": _num(1, 30, restaurant, date, nd=0)}


def find_places_to_eat(city, cuisine, price_level=None):
    prefix = ("Casa", "Little", "The Golden", "Blue")
    return [{"name": f"{_pick(prefix, city, cuisine, k)} {_name(cuisine, 'Kitchen').title()}",
             "price_level": price_level or _pick(("cheap", "moderate", "expensive"), city, k),
             "rating": _num(3.5, 4.9, city, cuisine, k), "open_until": _pick(("22:00", "23:00", "23:30"), city, k)}
            for k in range(3)]


def place_delivery_order(restaurant, items, address=None):
    dishes = _words(items)
    where = address if isinstance(address, dict) else {}
    return {"order_id": _ident("ORD", restaurant, dishes), "restaurant": _name(restaurant, "restaurant"),
            "items": dishes,
            "total": _r(sum(_num(6, 19, d) for d in dishes) + 2.5),
            "deliver_to": ", ".join(str(where[k]) for k in ("street", "city") if k in where) or "saved home address",
            "eta_minutes": _num(20, 55, restaurant, nd=0)}


def get_delivery_status(order_id):
    return {"order_id": order_id, "status": _pick(("being prepared", "picked up", "on the way", "delivered"), order_id),
            "eta_minutes": _num(0, 35, order_id, nd=0), "courier": _pick(("Sam", "Lea", "Omar", "Kai"), order_id)}


def get_restaurant_menu(restaurant, dietary="any"):
    dishes = {"vegetarian": ["halloumi burger", "mushroom risotto"], "vegan": ["lentil dahl", "tofu ramen"],
              "gluten-free": ["grilled salmon", "chicken salad"]}
    picks = dishes.get(dietary, ["steak frites", "mushroom risotto", "fish tacos"])
    return {"restaurant": _name(restaurant, "restaurant"), "filter": dietary or "any",
            "dishes": [{"name": d, "price": _num(9, 26, restaurant, d)} for d in picks]}


# ---------------------------------------------------------------- productivity

def add_todo_task(title, due_date=None, priority="medium"):
    return {"task_id": _ident("T", title), "title": _name(title, "task"), "due_date": due_date,
            "priority": priority or "medium",
            "open_tasks": _num(2, 15, title, nd=0)}


def list_todo_tasks(status="open"):
    tasks = [{"task_id": "T-104233", "title": "Renew passport", "status": "open"},
             {"task_id": "T-118090", "title": "Call the plumber", "status": "open"},
             {"task_id": "T-120551", "title": "Send invoice to client", "status": "done"}]
    return [t for t in tasks if status in (None, "all") or t["status"] == status]


def mark_task_done(task_id):
    return {"task_id": task_id, "status": "done", "remaining_open": _num(0, 9, task_id, nd=0)}


def write_note(title, content, tags=None):
    return {"note_id": _ident("N", title, content), "title": _name(title, "note"), "tags": _words(tags),
            "words": len(str(content).split())}


def search_notes(query):
    return [{"note_id": _ident("N", query, k),
             "title": f"{_name(query, 'Notes').capitalize()} {('ideas', 'plan', 'log')[k]}",
             "updated": f"2025-0{_num(1, 5, query, k, nd=0)}-1{k}"} for k in range(_num(1, 3, query, nd=0))]


def start_focus_session(minutes, block_sites=None):
    return {"session_id": _ident("FOCUS", minutes, block_sites), "minutes": _n(minutes, 1, 600),
            "blocked": _words(block_sites),
            "ends_in": f"{_n(minutes, 1, 600)} minutes"}


def get_daily_briefing():
    return {"meetings": 2, "first_meeting": "10:00 Project sync", "tasks_due": 3, "weather": "14 C, light rain",
            "commute_minutes": 28}
