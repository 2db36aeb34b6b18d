"""Agents, sessions and turns in one SQLite file under Herd's home (`agents.sqlite`, a `StateFile`), so they
survive a restart. Each write is one transaction (WAL); the methods block and are thread-safe, so async
code calls them through `asyncio.to_thread`. Unknown ids are `NotFoundError`s naming the id.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.home import StateFile

FILENAME = "agents.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    config TEXT NOT NULL              -- agent_config as the client sent it
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    started REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_agent ON sessions (agent_id, started);
CREATE TABLE IF NOT EXISTS turns (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created REAL NOT NULL,
    status TEXT NOT NULL,             -- in_progress | awaiting_input | complete | failed
    turn TEXT NOT NULL,               -- the Llama Stack Turn object
    state TEXT NOT NULL DEFAULT '{}'  -- the loop's own: the turn's messages, iterations used
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, created);
"""


class NotFoundError(HerdError):
    """An agent, session, turn or step id that does not exist (HTTP 404)."""


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class TurnRecord:
    """A stored turn: the Stack Turn object, its status and the loop state needed to resume it."""

    turn: dict[str, Any]
    status: str
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.turn["turn_id"]


class AgentStore:
    """The agents database (one file; `path` None: `<herd_home>/agents.sqlite`, created on the first write)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._state = StateFile(FILENAME, _SCHEMA, path)

    def close(self) -> None:
        self._state.close()

    # ---- agents -------------------------------------------------------------------------------
    def create_agent(self, config: dict[str, Any]) -> str:
        agent_id = new_id()
        with self._state.write() as db:
            db.execute("INSERT INTO agents VALUES (?, ?, ?)", (agent_id, time.time(), json.dumps(config)))
        return agent_id

    def agent(self, agent_id: str) -> dict[str, Any]:
        """{agent_id, agent_config, created_at}."""
        with self._state.read() as db:
            row = db.execute("SELECT id, created, config FROM agents WHERE id = ?", (agent_id,)).fetchone() \
                if db else None
        if row is None:
            raise NotFoundError(f"agent {agent_id!r} not found", "agent_id")
        return _agent(row)

    def agents(self) -> list[dict[str, Any]]:
        with self._state.read() as db:
            rows = db.execute("SELECT id, created, config FROM agents ORDER BY created, id").fetchall() if db else []
        return [_agent(r) for r in rows]

    def delete_agent(self, agent_id: str) -> None:
        with self._state.read() as db:
            if db is not None:
                with db:
                    if db.execute("DELETE FROM agents WHERE id = ?", (agent_id,)).rowcount:
                        return
        raise NotFoundError(f"agent {agent_id!r} not found", "agent_id")

    # ---- sessions -----------------------------------------------------------------------------
    def create_session(self, agent_id: str, name: str) -> str:
        self.agent(agent_id)
        session_id = new_id()
        with self._state.write() as db:
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (session_id, agent_id, name, time.time()))
        return session_id

    def check_session(self, agent_id: str, session_id: str) -> None:
        """NotFoundError naming the agent or the session when either does not exist."""
        with self._state.read() as db:
            _session_row(db, agent_id, session_id)

    def session(self, agent_id: str, session_id: str) -> dict[str, Any]:
        """{session_id, session_name, started_at, turns: [Turn]} (the turns in order)."""
        with self._state.read() as db:
            row = _session_row(db, agent_id, session_id)
            turns = db.execute("SELECT turn FROM turns WHERE session_id = ? ORDER BY rowid", (session_id,)).fetchall()
        return {"session_id": row[0], "session_name": row[1], "started_at": iso(row[2]),
                "turns": [json.loads(t[0]) for t in turns]}

    def sessions(self, agent_id: str) -> list[dict[str, Any]]:
        self.agent(agent_id)
        with self._state.read() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM sessions WHERE agent_id = ? ORDER BY started, id",
                                            (agent_id,))]
        return [self.session(agent_id, s) for s in ids]

    def delete_session(self, agent_id: str, session_id: str) -> None:
        with self._state.read() as db:
            _session_row(db, agent_id, session_id)
            with db:
                db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    # ---- turns --------------------------------------------------------------------------------
    def save_turn(self, session_id: str, record: TurnRecord) -> None:
        """Insert or update a turn (its Turn object, status and loop state), atomically."""
        with self._state.write() as db:
            db.execute("INSERT INTO turns (id, session_id, created, status, turn, state) VALUES (?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT(id) DO UPDATE SET status = excluded.status, turn = excluded.turn, "
                       "state = excluded.state",
                       (record.id, session_id, time.time(), record.status, json.dumps(record.turn),
                        json.dumps(record.state)))

    def turn(self, agent_id: str, session_id: str, turn_id: str) -> TurnRecord:
        with self._state.read() as db:
            _session_row(db, agent_id, session_id)  # 404s for the agent / session first
            row = db.execute("SELECT turn, status, state FROM turns WHERE id = ? AND session_id = ?",
                             (turn_id, session_id)).fetchone()
        if row is None:
            raise NotFoundError(f"turn {turn_id!r} not found in session {session_id!r}", "turn_id")
        return TurnRecord(json.loads(row[0]), row[1], json.loads(row[2]))

    def history(self, session_id: str, before: str | None = None) -> list[dict[str, Any]]:
        """The messages of the session's turns so far (or those before turn `before`), in order: what the
        next turn's prompt starts with."""
        with self._state.read() as db:
            if db is None:
                return []
            limit = db.execute("SELECT rowid FROM turns WHERE id = ?", (before,)).fetchone() if before else None
            rows = db.execute("SELECT state FROM turns WHERE session_id = ? AND status != 'failed' AND rowid < ? "
                              "ORDER BY rowid", (session_id, limit[0] if limit else 1 << 62)).fetchall()
        return [m for (state,) in rows for m in json.loads(state).get("messages", [])]


def _session_row(db: sqlite3.Connection | None, agent_id: str, session_id: str) -> tuple[str, str, float]:
    """(id, name, started) of a session of the agent; NotFoundError naming whichever is missing."""
    row = db.execute("SELECT id, name, started FROM sessions WHERE id = ? AND agent_id = ?",
                     (session_id, agent_id)).fetchone() if db else None
    if row is not None:
        return row
    if db is None or db.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone() is None:
        raise NotFoundError(f"agent {agent_id!r} not found", "agent_id")
    raise NotFoundError(f"session {session_id!r} not found for agent {agent_id!r}", "session_id")


def iso(t: float) -> str:
    """A UNIX time as the ISO-8601 UTC string Llama Stack's datetimes parse from."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _agent(row: tuple[str, float, str]) -> dict[str, Any]:
    return {"agent_id": row[0], "agent_config": json.loads(row[2]), "created_at": iso(row[1])}
