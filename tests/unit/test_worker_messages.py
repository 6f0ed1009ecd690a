"""What the supervisor and the worker say to each other: secrets stay out of reprs, and
a login form is checked before it reaches the supervisor."""

from __future__ import annotations

import ipaddress

import pytest
from messages import start_message

from sepconnect.ipc.wire import WireError
from sepconnect.ipc.worker_messages import (
    FROM_WORKER,
    TO_WORKER,
    FieldAnswer,
    FormChoice,
    LoggedIn,
    LoginAnswers,
    LoginField,
    LoginForm,
)


def test_start_repr_shows_no_secret() -> None:
    start = start_message("https://vpn.example/", cookie="webvpn-secret-cookie")
    shown = repr(start)
    assert "vpn.example" in shown  # the repr is still useful
    assert "webvpn-secret-cookie" not in shown
    assert not hasattr(start, "passwords")  # a worker gets secrets only in LoginAnswers


def test_login_answers_and_logged_in_show_no_secret() -> None:
    answers = LoginAnswers(
        answers=(
            FieldAnswer(name="username", value="alice"),
            FieldAnswer(name="password", value="hunter2"),
        )
    )
    assert "hunter2" not in repr(answers)
    assert TO_WORKER.decode_untrusted(TO_WORKER.encode(answers)) == answers
    done = LoggedIn(
        cookie="webvpn-secret", address=ipaddress.ip_address("198.18.1.1"),
        server_pin="pin-sha256:" + "A" * 43 + "=",
    )  # fmt: skip
    assert "webvpn-secret" not in repr(done)
    assert FROM_WORKER.decode_untrusted(FROM_WORKER.encode(done)) == done


def _form(*fields: LoginField, form_id: str = "main") -> LoginForm:
    return LoginForm(form_id=form_id, banner=None, message=None, error=None, fields=fields)


GROUPS = LoginField(
    kind="select", name="group_list", label="Group:",
    choices=(FormChoice(value="a", label="A"), FormChoice(value="b", label="B")),
)  # fmt: skip


def test_a_login_form_round_trips() -> None:
    form = _form(LoginField(kind="text", name="username", label="Username:"), GROUPS)
    assert FROM_WORKER.decode_untrusted(FROM_WORKER.encode(form)) == form


@pytest.mark.parametrize(
    "bad",
    [
        lambda: _form(LoginField(kind="text", name="a b", label="x")),  # not a field name
        lambda: _form(LoginField(kind="text", name="u", label="line\nbreak")),
        lambda: _form(LoginField(kind="text", name="u", label="\x9b2J")),
        lambda: _form(LoginField(kind="text", name="u", label="x"), form_id="a:b"),
        lambda: _form(LoginField(kind="text", name="u", label="x" * 257)),
    ],
)
def test_what_the_schema_refuses(bad: object) -> None:
    with pytest.raises(WireError):
        FROM_WORKER.decode_untrusted(FROM_WORKER.encode(bad()))  # type: ignore[operator]


def test_cross_field_rules() -> None:
    with pytest.raises(ValueError, match="twice"):
        _form(GROUPS, GROUPS)
    with pytest.raises(ValueError, match="choices"):
        LoginField(kind="select", name="s", label="S")
    with pytest.raises(ValueError, match="choices"):
        LoginField(kind="text", name="t", label="T", choices=GROUPS.choices)
    many = tuple(FormChoice(value=f"{i:0>200}", label=f"{i:0>200}") for i in range(40))
    with pytest.raises(ValueError, match="characters"):
        _form(LoginField(kind="select", name="s", label="S", choices=many))


def test_the_largest_form_fits_one_message() -> None:
    # MAX_FORM_TEXT characters of 4 UTF-8 bytes each, in 32 fields of 256 choices at most
    wide = "\U0001f600"
    choices = tuple(FormChoice(value=wide * 23, label=wide * 23) for _ in range(8))
    fields = tuple(
        LoginField(kind="select", name=f"f{i}", label=wide * 4, choices=choices) for i in range(32)
    )
    form = _form(*fields)
    assert len(FROM_WORKER.encode(form)) < 64 * 1024


def test_the_worker_passes_a_form_on_only_if_it_fits() -> None:
    from sepconnect.worker.connect import SessionFailure
    from sepconnect.worker.main import _login_form
    from sepconnect.worker.proto.auth import FormField, FormOption, FormPrompt

    user = FormField("text", "username", "Username:")
    fine = _login_form(FormPrompt("main", None, "Please enter your username.", None, (user,)))
    assert fine.fields == (LoginField(kind="text", name="username", label="Username:"),)
    options = tuple(FormOption(f"{i:0>250}", f"{i:0>250}", False) for i in range(30))
    huge = FormPrompt("main", None, None, None, (FormField("select", "s", "S", None, options),))
    groups = (FormOption("a", "A", False), FormOption("b", "B", True))
    select = FormField("select", "group_list", "Group:", None, groups)
    offered = _login_form(FormPrompt("main", None, None, None, (select,)))
    assert [(c.value, c.selected) for c in offered.fields[0].choices] == [
        ("a", False),
        ("b", True),
    ]
    with pytest.raises(SessionFailure) as info:
        _login_form(huge)
    assert info.value.kind == "protocol"
    assert "login form is unusable" in info.value.message
