from __future__ import annotations

import base64

from service.keys import user_keys
from service.tokens import new_session, parse_session_id, parse_token, user_tag


def test_new_session_token_secret_carries_256_bits() -> None:
    _, token, _ = new_session("u-1")

    secret = token.split(".", 1)[1]

    assert len(base64.urlsafe_b64decode(secret + "=")) == 32


def test_new_session_token_names_its_session() -> None:
    ref, token, secret_hash = new_session("u-1")

    parsed = parse_token(token)

    assert parsed is not None
    assert parsed.ref == ref
    assert parsed.secret_hash == secret_hash


def test_new_session_token_has_no_user_id_in_clear() -> None:
    _, token, _ = new_session("alice@example.com")

    assert "alice" not in token


def test_new_session_ids_are_unique() -> None:
    tokens = {new_session("u-1")[1] for _ in range(1000)}

    assert len(tokens) == 1000


def test_hash_secret_is_not_the_secret() -> None:
    _, token, secret_hash = new_session("u-1")

    assert token.split(".", 1)[1].encode() not in secret_hash
    assert len(secret_hash) == 16


def test_parse_token_rejects_malformed() -> None:
    ref, token, _ = new_session("u-1")

    assert parse_token(token + "x") is None
    assert parse_token(token.replace(".", "-")) is None
    assert parse_token("") is None
    assert parse_token("sess_" + token) is None
    assert parse_token(token[:-1] + "\n") is None


def test_parse_session_id_round_trips() -> None:
    ref, _, _ = new_session("u-1")

    assert parse_session_id(ref.session_id) == ref
    assert parse_session_id(ref.session_id + "\n") is None
    assert parse_session_id("sess_short") is None


def test_user_tag_is_the_same_for_every_session_of_a_user() -> None:
    first, _, _ = new_session("u-1")
    second, _, _ = new_session("u-1")

    assert first.tag == second.tag == user_tag("u-1")


def test_user_keys_hash_tag_ignores_braces_in_user_id() -> None:
    for user_id in ["u-1", "{u-1}", "}", "{}", "}{", "a{b}c", "a:b", "a*"]:
        keys = user_keys("ss:", user_tag(user_id))
        # Redis hashes the text between the first "{" and the next "}".
        hashed = keys.index[keys.index.index("{") + 1 : keys.index.index("}")]

        assert hashed == user_tag(user_id)


def test_user_tag_differs_for_braced_user_id() -> None:
    assert user_tag("u-1") != user_tag("{u-1}")
