"""What the console shows: numbers masked for viewers, secrets hidden for everyone, signed
sessions that expire, and the login limit."""

from __future__ import annotations

import pytest

from console.masking import HIDDEN, Viewer, hide_secrets, mask_number
from console.pages import _next
from console.queries import Search, SearchError, number_prefixes
from console.session import LoginLimiter, Session, SessionSigner
from schemas.record import record_id_for


def test_a_viewer_sees_numbers_masked_and_an_operator_in_full() -> None:
    fields = {
        "caller": "8675500000000",
        "callee": "+8613812345678",
        "display_number": "12345",
        "external_id": "9876543210",
        "extra": {"otherNumber": "8613999999999", "n": 3},
    }
    viewer = Viewer(full_numbers=False).record(fields)
    assert viewer["caller"] == "867********00"
    assert viewer["callee"] == "+86*********78"
    assert viewer["display_number"] == "*****"
    assert viewer["external_id"] == "9876543210"  # an id, not a number to call
    assert viewer["extra"] == {"otherNumber": "861********99", "n": 3}
    assert Viewer(full_numbers=True).record(fields) == fields
    assert mask_number(None) is None


def test_secrets_are_hidden_from_everyone_in_payloads_and_bodies() -> None:
    payload = {"sign": "abc", "data": [{"appKey": "k", "token": "t", "phone": "x"}]}
    assert hide_secrets(payload) == {
        "sign": HIDDEN,
        "data": [{"appKey": HIDDEN, "token": HIDDEN, "phone": "x"}],
    }
    operator = Viewer(full_numbers=True)
    shown = operator.text('a=1&sign=deadbeef&phone=8613800000000 {"api_key": "zzz"}')
    assert shown == f'a=1&sign={HIDDEN}&phone=8613800000000 {{"api_key": {HIDDEN}}}'
    assert Viewer(full_numbers=False).text("phone=8613800000000") == "phone=861********00"


def test_a_session_cookie_is_refused_when_altered_expired_or_signed_by_another_key() -> None:
    signer = SessionSigner("k" * 32, max_age_seconds=60)
    session = Session.fresh("olga")
    cookie = signer.dumps(session)
    assert signer.loads(cookie) == session
    # The signature's last base64 character carries bits that decoding drops ("A" and "B"
    # may decode alike): the one before it is altered.
    altered = cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]
    assert signer.loads(altered) is None
    assert SessionSigner("j" * 32, 60).loads(cookie) is None
    assert SessionSigner("k" * 32, max_age_seconds=-1).loads(cookie) is None  # expired
    assert session.accepts(session.csrf)
    assert not session.accepts("")
    assert not session.accepts(Session.fresh().csrf)


def test_five_failures_per_client_or_per_name_close_the_door() -> None:
    limiter = LoginLimiter(attempts=5, window=300)
    for _ in range(5):
        assert limiter.allowed("10.0.0.1", "olga")
        limiter.failed("10.0.0.1", "olga")
    assert not limiter.allowed("10.0.0.1", "victor")  # same client
    assert not limiter.allowed("10.0.0.2", "olga")  # same name
    assert limiter.allowed("10.0.0.2", "victor")


def test_a_number_is_searched_in_the_forms_providers_send() -> None:
    assert number_prefixes("+86 138-0000") == ["861380000", "+861380000", "00861380000"]
    assert number_prefixes("0086138") == ["86138", "+86138", "0086138"]
    with pytest.raises(SearchError, match="at least 3 digits"):
        number_prefixes("+8")
    clauses, args = Search(number="861", source="nx-cc").where()
    assert clauses[0] == "source = $1"
    assert "caller ~>=~ $2 AND caller ~<~ $3" in clauses[1]
    assert args[:3] == ["nx-cc", "861", "862"]


def test_an_external_id_without_a_source_probes_each_known_source() -> None:
    clauses, args = Search(external_id="abc", known_sources=("a", "b")).where()
    # A record's id is the uuid5 of its key: one primary-key probe per source.
    assert clauses == ["record_id = ANY($1::uuid[])", "external_id = $2"]
    assert args == [[record_id_for("a", "abc"), record_id_for("b", "abc")], "abc"]
    clauses, args = Search(source="a", external_id="abc", known_sources=("a", "b")).where()
    assert clauses == ["source = $1", "record_id = ANY($2::uuid[])", "external_id = $3"]
    assert args == ["a", [record_id_for("a", "abc")], "abc"]
    with pytest.raises(SearchError, match="is not a UUID"):
        Search(record_id="nope").where()


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("/search?number=86", True),
        ("//evil.example", False),
        ("/\\evil.example", False),
        ("https://evil.example/", False),
        ("", False),
    ],
)
def test_after_login_only_a_path_of_the_console_is_followed(target: str, kept: bool) -> None:
    assert _next(target) == (target if kept else "/")
