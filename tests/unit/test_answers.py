"""supervisor/answers.py: which source answers which field of a login form, as
openconnect's process_auth_form_cb does, and the one-time codes (no clock: ``now`` is
given)."""

from __future__ import annotations

import pytest

from sepconnect.ipc.worker_messages import FormChoice, LoginAnswers, LoginField, LoginForm
from sepconnect.supervisor.answers import (
    AnswerSources,
    FormEntry,
    Login,
    LoginCancelled,
    Prompt,
    TokenCodes,
    Unanswerable,
    match_choice,
)
from sepconnect.supervisor.oath import hotp, parse_token_secret, totp_step

KEY = bytes(range(20))
TOTP = parse_token_secret("totp", "0x" + KEY.hex())
NOW = 1_700_000_000.0

USERNAME = LoginField(kind="text", name="username", label="Username:")
PASSWORD = LoginField(kind="password", name="password", label="Password:")
GROUP = LoginField(
    kind="select", name="group_list", label="Group:",
    choices=(FormChoice(value="engineering", label="Engineering"),
             FormChoice(value="sales", label="Sales"), FormChoice(value="s2", label="Sales 2")),
)  # fmt: skip


def form(*fields: LoginField, form_id: str = "main", message: str | None = None) -> LoginForm:
    return LoginForm(form_id=form_id, banner=None, message=message, error=None, fields=fields)


def values(reply: LoginAnswers) -> dict[str, str]:
    return {a.name: a.value for a in reply.answers}


class Terminal:
    """A scripted terminal: the lines to type, and what it was asked."""

    def __init__(self, *lines: str | None) -> None:
        self.lines = list(lines)
        self.asked: list[Prompt] = []

    def __call__(self, prompt: Prompt) -> str | None:
        self.asked.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


# -- ocserv's forms: the username, the password, the OTP round ------------------------------


def test_user_and_password_lines_then_the_code_for_the_otp_round() -> None:
    codes = TokenCodes(TOTP)
    login = Login(AnswerSources(username="test", passwords=("test123",), token=TOTP), codes)
    assert values(login.answer(form(USERNAME), NOW, None)) == {"username": "test"}
    assert values(login.answer(form(PASSWORD), NOW, None)) == {"password": "test123"}
    otp = login.answer(form(PASSWORD, message="Please enter your OTP password."), NOW, None)
    assert values(otp) == {"password": hotp(KEY, totp_step(NOW))}


def test_an_interactive_password_and_then_the_code() -> None:
    tty = Terminal("typed secret")
    login = Login(
        AnswerSources(username="test", token=TOTP, no_prompt_reason=None), TokenCodes(TOTP)
    )
    login.answer(form(USERNAME), NOW, tty)
    assert values(login.answer(form(PASSWORD), NOW, tty)) == {"password": "typed secret"}
    assert tty.asked == [Prompt("Password:", hidden=True)]
    assert values(login.answer(form(PASSWORD), NOW, tty)) == {"password": hotp(KEY, totp_step(NOW))}
    assert len(tty.asked) == 1


def test_further_password_lines_answer_further_prompts_before_the_code() -> None:
    login = Login(AnswerSources(passwords=("one", "two"), token=TOTP), TokenCodes(TOTP))
    assert values(login.answer(form(PASSWORD), NOW, None)) == {"password": "one"}
    assert values(login.answer(form(PASSWORD), NOW, None)) == {"password": "two"}
    assert values(login.answer(form(PASSWORD), NOW, None)) == {
        "password": hotp(KEY, totp_step(NOW))
    }


@pytest.mark.parametrize(
    ("field", "form_id"),
    [(LoginField(kind="password", name="secondary_password", label="Password2:"), "main"),
     (PASSWORD, "challenge")],
)  # fmt: skip
def test_openconnects_token_fields_take_the_code_first(field: LoginField, form_id: str) -> None:
    login = Login(AnswerSources(passwords=("pw",), token=TOTP), TokenCodes(TOTP))
    assert values(login.answer(form(field, form_id=form_id), NOW, None)) == {
        field.name: hotp(KEY, totp_step(NOW))
    }


def test_only_code_without_anyone_to_ask_answers_the_first_password() -> None:
    # ocserv with an OTP file and no password for the user asks only for the code
    login = Login(AnswerSources(token=TOTP), TokenCodes(TOTP))
    assert values(login.answer(form(PASSWORD), NOW, None)) == {
        "password": hotp(KEY, totp_step(NOW))
    }


def test_one_code_per_login() -> None:
    login = Login(AnswerSources(token=TOTP), TokenCodes(TOTP))
    login.answer(form(PASSWORD), NOW, None)
    with pytest.raises(Unanswerable, match='"Password:"'):
        login.answer(form(PASSWORD), NOW, None)


# -- one-time codes across logins ----------------------------------------------------------


def test_every_login_gets_a_fresh_totp_code() -> None:
    codes = TokenCodes(TOTP)
    first = codes.next_code(NOW)
    again = codes.next_code(NOW + 1)  # same 30-s step: the next step's code
    later = codes.next_code(NOW + 300)
    step = totp_step(NOW)
    assert (first, again, later) == (
        hotp(KEY, step),
        hotp(KEY, step + 1),
        hotp(KEY, totp_step(NOW + 300)),
    )


def test_hotp_counts_and_saves_the_next_counter_first() -> None:
    token = parse_token_secret("hotp", "base32:AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT,5")
    saved: list[str] = []
    codes = TokenCodes(token, saved.append)
    assert [codes.next_code(NOW), codes.next_code(NOW)] == [hotp(token.key, 5), hotp(token.key, 6)]
    assert saved == [
        "base32:AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT,6",
        "base32:AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT,7",
    ]


def test_no_code_is_used_up_by_a_form_that_is_not_sent() -> None:
    token = parse_token_secret("hotp", "0x" + KEY.hex() + ",9")
    saved: list[str] = []
    login = Login(AnswerSources(token=token), TokenCodes(token, saved.append))
    secondary = LoginField(kind="password", name="secondary_password", label="Password2:")
    with pytest.raises(Unanswerable):  # the username has no answer: nothing is sent
        login.answer(form(USERNAME, secondary), NOW, None)
    assert saved == []


# -- usernames, groups, other selects ------------------------------------------------------


def test_user_answers_the_first_user_field_of_a_login_only() -> None:
    login = Login(AnswerSources(username="alice"))
    assert values(login.answer(form(USERNAME), NOW, None)) == {"username": "alice"}
    with pytest.raises(Unanswerable, match='"Username:"'):
        login.answer(form(USERNAME), NOW, None)


def test_a_missing_username_is_a_clear_error_before_the_password() -> None:
    login = Login(AnswerSources(passwords=("secret",)))
    with pytest.raises(Unanswerable) as info:
        login.answer(form(USERNAME, PASSWORD), NOW, None)
    assert info.value.kind == "need_input"
    assert str(info.value) == (
        'the server asks for "Username:" (form main, field username) and nothing answers it '
        "(standard input is not a terminal): give --user NAME or "
        "--form-entry main:username=VALUE"
    )


def test_non_inter_and_relogins_say_why_nothing_is_asked() -> None:
    with pytest.raises(Unanswerable, match=r"\(--non-inter\): give --passwd-on-stdin, "
                       r"--credentials-file FILE or --form-entry main:password=VALUE"):  # fmt: skip
        Login(AnswerSources(no_prompt_reason="--non-inter")).answer(form(PASSWORD), NOW, None)
    with pytest.raises(Unanswerable, match="nothing is asked when logging in again"):
        Login(AnswerSources(no_prompt_reason=None)).answer(form(PASSWORD), NOW, None)


@pytest.mark.parametrize(
    ("wanted", "value"),
    [("sales", "sales"), ("Engineering", "engineering"), ("engineering", "engineering"),
     ("ENG", "engineering"), ("sales 2", "s2"), ("Sales", "sales")],
)  # fmt: skip
def test_authgroup_by_value_label_or_unique_prefix(wanted: str, value: str) -> None:
    login = Login(AnswerSources(username="u", group=wanted))
    assert values(login.answer(form(USERNAME, GROUP), NOW, None))["group_list"] == value


def test_authgroup_goes_with_forms_without_a_group_list() -> None:
    # ocserv takes a plain-auth group of the user's without offering a list of groups
    login = Login(AnswerSources(username="u", passwords=("p",), group="tost"))
    assert login.answer(form(USERNAME), NOW, None).group == "tost"
    assert login.answer(form(PASSWORD), NOW, None).group == "tost"
    listed = Login(AnswerSources(username="u", group="sales"))
    assert listed.answer(form(USERNAME, GROUP), NOW, None).group is None  # the list answers
    assert Login(AnswerSources(username="u")).answer(form(USERNAME), NOW, None).group is None


@pytest.mark.parametrize("wanted", ["nosuch", "sal", ""])
def test_authgroup_not_offered(wanted: str) -> None:
    login = Login(AnswerSources(username="u", group=wanted, no_prompt_reason=None))
    with pytest.raises(Unanswerable) as info:
        login.answer(form(USERNAME, GROUP), NOW, Terminal())
    assert info.value.kind == "unknown_group"
    assert str(info.value) == (
        f"Group {wanted!r} is not offered by the server (offered: engineering, s2, sales)"
    )


def test_an_unanswered_select_is_an_error_naming_its_choices() -> None:
    login = Login(AnswerSources(username="u", passwords=("p",)))
    with pytest.raises(Unanswerable) as info:
        login.answer(form(USERNAME, GROUP), NOW, None)
    assert str(info.value) == (
        'the server asks for "Group:" (form main, field group_list; offered: engineering, '
        "s2, sales) and nothing answers it (standard input is not a terminal): give "
        "--authgroup GROUP or --form-entry main:group_list=VALUE"
    )


def test_a_form_asking_only_for_the_group_gets_its_selected_or_first_group() -> None:
    # ocserv's "Please select your group." for a client certificate with several groups
    # (cert-group-oid): no server default, so openconnect takes one; never the terminal.
    tty = Terminal()
    first = Login(AnswerSources(no_prompt_reason=None)).answer(form(GROUP), NOW, tty)
    assert values(first) == {"group_list": "engineering"}
    marked = LoginField(
        kind="select", name="group_list", label="Group:",
        choices=(FormChoice(value="a", label="A"), FormChoice(value="b", label="B", selected=True)),
    )  # fmt: skip
    assert values(Login(AnswerSources()).answer(form(marked), NOW, None)) == {"group_list": "b"}
    chosen = Login(AnswerSources(group="Sales")).answer(form(GROUP), NOW, None)
    assert values(chosen) == {"group_list": "sales"}  # --authgroup still chooses
    assert tty.asked == []


def test_other_selects_take_form_entries_or_their_only_choice() -> None:
    realm = LoginField(
        kind="select", name="realm", label="Realm:",
        choices=(FormChoice(value="a", label="Alpha"), FormChoice(value="b", label="Beta")),
    )  # fmt: skip
    only = LoginField(
        kind="select", name="only", label="Only:", choices=(FormChoice(value="x", label="X"),)
    )
    sources = AnswerSources(form_entries=(FormEntry("main", "realm", "beta"),))
    assert values(Login(sources).answer(form(realm, only), NOW, None)) == {
        "realm": "b",
        "only": "x",
    }
    bad = AnswerSources(form_entries=(FormEntry("main", "realm", "gamma"),))
    with pytest.raises(Unanswerable, match="not one choice of"):
        Login(bad).answer(form(realm), NOW, None)
    with pytest.raises(Unanswerable, match="field realm"):  # no first-option default
        Login(AnswerSources()).answer(form(realm), NOW, None)


def test_form_entries_match_form_and_field() -> None:
    email = LoginField(kind="text", name="email", label="E-mail:")
    entries = (FormEntry("other", "email", "no"), FormEntry("main", "email", "a@example.net"))
    assert values(Login(AnswerSources(form_entries=entries)).answer(form(email), NOW, None)) == {
        "email": "a@example.net"
    }
    # a password line comes before a form entry (openconnect: --passwd-on-stdin first)
    sources = AnswerSources(passwords=("line",), form_entries=(FormEntry("main", "password", "e"),))
    login = Login(sources)
    assert values(login.answer(form(PASSWORD), NOW, None)) == {"password": "line"}
    assert values(login.answer(form(PASSWORD), NOW, None)) == {"password": "e"}


def test_a_new_password_is_never_a_password_line_or_a_code() -> None:
    new = LoginField(kind="password", name="new_password", label="New password:")
    login = Login(AnswerSources(passwords=("a", "b"), token=TOTP), TokenCodes(TOTP))
    with pytest.raises(Unanswerable, match='"New password:"') as info:
        login.answer(form(new), NOW, None)
    assert "--passwd-on-stdin" not in str(info.value)


# -- the terminal -----------------------------------------------------------------------------


def test_prompts_with_the_servers_labels_in_form_order() -> None:
    tty = Terminal("bob", "SALES", "pw")
    login = Login(AnswerSources(no_prompt_reason=None))
    f = LoginForm(form_id="main", banner="Welcome", message="Please log in.", error=None,
                  fields=(USERNAME, GROUP, PASSWORD))  # fmt: skip
    assert values(login.answer(f, NOW, tty)) == {
        "username": "bob", "group_list": "sales", "password": "pw"
    }  # fmt: skip
    assert tty.asked == [
        Prompt("Username:", notes=("Please log in.",)),  # the banner: the session's
        Prompt("Group:", choices=("Engineering", "Sales", "Sales 2")),
        Prompt("Password:", hidden=True),
    ]


def test_a_choice_not_offered_is_asked_again() -> None:
    tty = Terminal("nope", "s", "Sales 2")  # "s" begins two labels
    login = Login(AnswerSources(username="u", no_prompt_reason=None))
    assert values(login.answer(form(USERNAME, GROUP), NOW, tty))["group_list"] == "s2"
    assert [p.notes for p in tty.asked][1:] == [
        ('"nope" is not one of the choices (or more than one begins so)',),
        ('"s" is not one of the choices (or more than one begins so)',),
    ]


def test_a_signal_or_the_end_of_input_ends_the_login() -> None:
    with pytest.raises(LoginCancelled):
        Login(AnswerSources(no_prompt_reason=None)).answer(form(USERNAME), NOW, Terminal(None))
    with pytest.raises(Unanswerable, match="end of input"):
        Login(AnswerSources(no_prompt_reason=None)).answer(form(USERNAME), NOW, Terminal())


def test_a_login_of_endless_forms_is_cut_short() -> None:
    # the worker is not trusted to keep its own bound: each form would take a password line
    login = Login(AnswerSources(passwords=("p",) * 8, form_entries=(FormEntry("main", "u", "x"),)))
    text = LoginField(kind="text", name="u", label="U:")
    for _ in range(10):
        login.answer(form(text), NOW, None)
    with pytest.raises(Unanswerable, match="within 10 forms") as info:
        login.answer(form(text), NOW, None)
    assert info.value.kind == "protocol"


def test_what_can_log_in_again_unattended() -> None:
    assert not AnswerSources(username="u").unattended
    assert AnswerSources(passwords=("p",)).unattended
    assert AnswerSources(token=TOTP).unattended
    assert AnswerSources(form_entries=(FormEntry("main", "password", "p"),)).unattended


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("main:username=alice", ("main", "username", "alice")),
     ("main:password=a=b:c", ("main", "password", "a=b:c")),
     ("f:g=", ("f", "g", ""))],
)  # fmt: skip
def test_form_entry_syntax(text: str, parsed: tuple[str, str, str]) -> None:
    entry = FormEntry.parse(text)
    assert (entry.form_id, entry.name, entry.value) == parsed
    assert parsed[2] not in repr(entry) or not parsed[2]


@pytest.mark.parametrize("text", ["main:username", "username=x", ":f=x", "main:=x", "=x"])
def test_bad_form_entries(text: str) -> None:
    with pytest.raises(ValueError, match="FORM:FIELD=VALUE"):
        FormEntry.parse(text)


def test_match_choice() -> None:
    choices = GROUP.choices
    assert match_choice("s2", choices) == choices[2]  # a value
    assert match_choice("SALES", choices) == choices[1]  # a whole label, any case
    assert match_choice("sales ", choices) == choices[2]  # a unique prefix
    assert match_choice("Sal", choices) is None  # two labels begin so
    assert match_choice("", choices) is None
