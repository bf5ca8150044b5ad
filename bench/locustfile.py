"""Locust traffic mix for the session store (FastHttpUser).

Three kinds of simulated clients, weighted from the command line:

ValidateUser     an API gateway validating requests (GET /v1/validate)
                 over many distinct sessions, tokens read from --tokens-file
                 (written by bench/run's seeding step).
ChurnUser        an app backend signing users in on rotating devices
                 (POST /v1/sessions with the API key) under a policy with a
                 small max_sessions and on_limit "reject": a 409 means the
                 limit was hit, and the app then revokes the user's oldest
                 session (DELETE /v1/sessions/{id}) as a user would.
SelfServiceUser  a signed-in user checking the session status, listing
                 sessions, extending, and now and then signing out every
                 other device (then signing two devices in again).

Churn and self-service clients create their own users, so they never
revoke a session that a ValidateUser holds. Requests are grouped with
name= so session ids do not split the statistics, and every unexpected
status is a failure whose message names the status and problem code.

Run it through bench/run, or by hand against a running service:
    locust -f bench/locustfile.py --headless -H http://127.0.0.1:8080 -u 50 -r 10 -t 60s \\
        --tokens-file tokens.tsv --validate-weight 8 --churn-weight 1 --self-service-weight 1
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, User, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import MasterRunner

# bench/seed.py is not imported: Locust may load this file outside the repository's path.
CHURN_DEVICES = 5
SELF_SERVICE_DEVICES = 3
DEFAULT_API_KEY = "bench-api-key-0123456789abcdef"
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0 Safari/537.36")

_tokens: list[tuple[str, str]] = []


@events.init_command_line_parser.add_listener
def add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("session store")
    group.add_argument("--tokens-file", default="",
                       help="seeded tokens for ValidateUser, one token<TAB>user agent per line")
    group.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", DEFAULT_API_KEY),
                       help="management API key (default: $BENCH_API_KEY or bench/run's key)")
    group.add_argument("--validate-weight", type=int, default=8, help="weight of ValidateUser (default 8)")
    group.add_argument("--churn-weight", type=int, default=1, help="weight of ChurnUser (default 1)")
    group.add_argument("--self-service-weight", type=int, default=1,
                       help="weight of SelfServiceUser (default 1)")
    group.add_argument("--churn-policy", default="bench_churn",
                       help="policy for churn sign-ins; bench/run configures one with max_sessions 3")


@events.init.add_listener
def apply_options(environment: Environment, **_kwargs: Any) -> None:
    """Set class weights from the command line and load the seeded tokens."""
    options = environment.parsed_options
    if options is None:
        return
    weights: dict[type[User], int] = {ValidateUser: options.validate_weight, ChurnUser: options.churn_weight,
               SelfServiceUser: options.self_service_weight}
    for user_class, weight in weights.items():
        user_class.weight = weight
    # A class with weight 0 is left out, so it gets no users at all.
    environment.user_classes = [cls for cls in environment.user_classes if weights.get(cls, 1) > 0]
    if isinstance(environment.runner, MasterRunner) or options.validate_weight == 0:
        return
    if not options.tokens_file:
        raise SystemExit("locustfile: --tokens-file is required when --validate-weight is above 0")
    for line in Path(options.tokens_file).read_text(encoding="utf-8").splitlines():
        if line:
            token, user_agent = line.split("\t")[:2]
            _tokens.append((token, user_agent))


def _problem_code(response: Any) -> str:
    try:
        return str(response.json().get("code", ""))
    except Exception:  # noqa: BLE001 - any undecodable body just has no code
        return ""


def _fail(response: Any) -> None:
    response.failure(f"status {response.status_code} {_problem_code(response)}".strip())


class ValidateUser(FastHttpUser):
    """Gateway traffic: one validation after another over random seeded sessions."""

    weight = 8

    @task
    def validate(self) -> None:
        token, user_agent = random.choice(_tokens)
        headers = {"Authorization": f"Bearer {token}", "User-Agent": user_agent}
        with self.client.get("/v1/validate", headers=headers, name="/v1/validate",
                             catch_response=True) as response:
            if response.status_code == 200:
                response.success()
            else:
                _fail(response)


class _SignsIn(FastHttpUser):
    abstract = True

    def sign_in(self, user_id: str, device: int, policy: str | None, name: str,
                accept: tuple[int, ...] = (201,)) -> dict[str, Any] | None:
        """POST /v1/sessions; return the body of a 201, None for another accepted status."""
        body: dict[str, Any] = {
            "user_id": user_id,
            "device": {"id": f"device-{device}", "type": "Pixel_8", "name": f"Bench device {device:04d}"},
            "client": {"ip": "127.0.0.1", "user_agent": USER_AGENT},
        }
        if policy:
            body["policy"] = policy
        headers = {"Authorization": f"Bearer {self.environment.parsed_options.api_key}"}
        with self.client.post("/v1/sessions", json=body, headers=headers, name=name,
                              catch_response=True) as response:
            if response.status_code not in accept:
                _fail(response)
                return None
            response.success()
            if response.status_code == 409:
                # A row of its own, so the report shows how often the limit was hit.
                response.request_meta["name"] = f"{name} 409 limit reached"
            return response.json() if response.status_code == 201 else None


class ChurnUser(_SignsIn):
    """Sign-ins on rotating devices of one user, against a small concurrent session limit."""

    weight = 1
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.user_id = f"churn-{uuid.uuid4()}"
        # session ids of this user's sessions, oldest first
        self.sessions: list[str] = []

    @task
    def sign_in_next_device(self) -> None:
        policy = self.environment.parsed_options.churn_policy
        created = self.sign_in(self.user_id, random.randrange(CHURN_DEVICES), policy,
                               "/v1/sessions [churn]", accept=(201, 409))
        if created is not None:
            self.sessions = [sid for sid in self.sessions if sid not in created.get("replaced", [])]
            self.sessions.append(created["session_id"])
            return
        # 409: the user is at the limit, so the app signs out the oldest device.
        if self.sessions:
            self.revoke(self.sessions.pop(0))

    def revoke(self, session_id: str) -> None:
        headers = {"Authorization": f"Bearer {self.environment.parsed_options.api_key}"}
        with self.client.delete(f"/v1/sessions/{session_id}", headers=headers,
                                name="/v1/sessions/{session_id} [churn]",
                                catch_response=True) as response:
            # 404: the session ended meanwhile, which the app treats as done.
            if response.status_code in (204, 404):
                response.success()
            else:
                _fail(response)


class SelfServiceUser(_SignsIn):
    """A user on one of their devices using the /v1/me endpoints."""

    weight = 1
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.user_id = f"self-{uuid.uuid4()}"
        self.token = ""
        for device in range(SELF_SERVICE_DEVICES):
            created = self.sign_in(self.user_id, device, None, "/v1/sessions [self-service setup]")
            if created is not None and not self.token:
                self.token = created["token"]

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "User-Agent": USER_AGENT}

    def _call(self, method: str, path: str, name: str, expected: int = 200) -> None:
        if not self.token:
            return
        with self.client.request(method, path, headers=self._headers(), name=name,
                                 catch_response=True) as response:
            if response.status_code == expected:
                response.success()
            else:
                _fail(response)

    @task(5)
    def status(self) -> None:
        self._call("GET", "/v1/me/session", "/v1/me/session")

    @task(5)
    def list_sessions(self) -> None:
        self._call("GET", "/v1/me/sessions", "/v1/me/sessions")

    @task(3)
    def extend(self) -> None:
        self._call("POST", "/v1/me/session/extend", "/v1/me/session/extend")

    @task(1)
    def revoke_others(self) -> None:
        self._call("DELETE", "/v1/me/sessions?scope=others", "/v1/me/sessions?scope=others")
        # Sign the other devices in again, so the next revoke has work to do.
        for device in range(1, SELF_SERVICE_DEVICES):
            self.sign_in(self.user_id, device, None, "/v1/sessions [self-service refill]")
