"""Answers to the server's login forms: the supervisor's side of a login, sans-I/O.

The worker parses each form and sends the fields someone must answer (a
:class:`~sepconnect.ipc.worker_messages.LoginForm`); the supervisor answers them here
from what it holds, as openconnect's ``process_auth_form_cb`` (main.c) does:

- a select: the group list from ``--authgroup``, then ``--form-entry FORM:FIELD=VALUE``
  (matched as openconnect matches choices: an option's value, then its label ignoring
  case, then a unique label prefix); a select with one option takes it, and so does a
  group list that is the form's only field (a client certificate's groups) with its
  selected option, else its first; else the terminal, which shows the choices;
- a text field: ``--user`` for the first field whose name starts with ``user``, then
  ``--form-entry``, then the terminal;
- a password field: the one-time code for the fields openconnect gives it
  (``secondary_password``, any password field of a form with id ``challenge``); the
  password lines (``--passwd-on-stdin``, ``--credentials-file``) in order; then
  ``--form-entry``; then the one-time code for any later password field of the login
  (ocserv's OTP round asks for ``Password:`` again after the password) or, when nothing
  can be asked, for the first one; then the terminal, with the input hidden. A field
  that asks for a new password takes only ``--form-entry`` or the terminal.

Nothing is sent when a field has no answer: :class:`Unanswerable` names it and the
options that would answer it, before any password of the form leaves. The terminal is
asked only during the first login of a session (the supervisor passes no ``ask``
later), and one one-time code is generated per login at most, when the form is
answered: :class:`TokenCodes` never hands out a code an earlier login got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from sepconnect.ipc.worker_messages import (
    FieldAnswer,
    FormChoice,
    LoginAnswers,
    LoginField,
    LoginForm,
)
from sepconnect.supervisor.oath import OathToken, hotp, totp_step

__all__ = [
    "GROUP_FIELD",
    "AnswerSources",
    "Ask",
    "FormEntry",
    "Login",
    "LoginCancelled",
    "Prompt",
    "TokenCodes",
    "Unanswerable",
    "match_choice",
]

GROUP_FIELD: Final = "group_list"
"""The select that is the server's group list (openconnect's authgroup)."""
# openconnect's token fields (auth.c, cstp_can_gen_tokencode): names, not secrets
TOKEN_FORM: Final = "challenge"  # noqa: S105
TOKEN_FIELD: Final = "secondary_password"  # noqa: S105
PASSWORD_CHANGE: Final = frozenset({"new_password", "verify_password", "new_pin", "verify_pin"})
"""Fields that choose a new password: never answered from the password lines or the token."""
_CHOICE_ATTEMPTS: Final = 5
MAX_FORMS: Final = 10
"""Forms one login may bring (the worker's own bound, auth.MAX_ROUNDS): a worker that
sends more is not to be believed, and gets no more password lines or questions."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """One question for the terminal: *notes* (the form's banner, error and message) are
    shown before the first question of a form; *choices* are a select's labels."""

    label: str
    hidden: bool = False
    choices: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


Ask = Callable[[Prompt], str | None]
"""The terminal: the line typed (without its newline), or None if a signal came first.
Raises EOFError at the end of input."""


class LoginCancelled(Exception):
    """A signal came while the terminal was asking; the supervisor acts on it next."""


class Unanswerable(Exception):
    """A field nothing answers, or a choice the server does not offer: the login ends
    before the form's answers are sent. *kind* is the failure's (its exit code)."""

    def __init__(self, kind: Literal["need_input", "unknown_group", "protocol"], message: str):
        super().__init__(message)
        self.kind: Literal["need_input", "unknown_group", "protocol"] = kind


@dataclass(frozen=True, slots=True)
class FormEntry:
    """``--form-entry FORM:FIELD=VALUE`` (openconnect's syntax: FORM up to the first
    ``:``, FIELD up to the first ``=``, VALUE the rest)."""

    form_id: str
    name: str
    value: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> FormEntry:
        key, eq, value = text.partition("=")
        form_id, colon, name = key.partition(":")
        if not eq or not colon or not form_id or not name:
            raise ValueError("expected FORM:FIELD=VALUE, e.g. main:username=alice")
        return cls(form_id, name, value)


@dataclass(frozen=True, slots=True)
class AnswerSources:
    """What the user gave to answer login forms with; kept for the whole session.

    *no_prompt_reason* says why the terminal cannot be asked (``--non-inter``, no
    terminal); None when it can.
    """

    username: str | None = None
    passwords: tuple[str, ...] = field(default=(), repr=False)
    group: str | None = None
    form_entries: tuple[FormEntry, ...] = ()
    token: OathToken | None = None
    no_prompt_reason: str | None = "standard input is not a terminal"

    @property
    def unattended(self) -> bool:
        """Whether a login can run again with nobody there (after the server ended the
        session, or rejected the cookie): a password, a form entry or a token is kept."""
        return bool(self.passwords or self.form_entries or self.token)

    def entry(self, form_id: str, name: str) -> str | None:
        for entry in self.form_entries:
            if entry.form_id == form_id and entry.name == name:
                return entry.value
        return None


class TokenCodes:
    """The session's one-time codes: each login gets one no earlier login got.

    TOTP: the current 30-s step's code, or the next step's when a login in the same
    step already had that one (servers accept codes a few steps ahead: ocserv, through
    liboath, up to 20). HOTP: the next counter, which *save* is given first (as the
    secret's text with its new counter, for the token file) so that no code is sent
    before its counter is recorded.
    """

    def __init__(self, token: OathToken, save: Callable[[str], None] | None = None) -> None:
        self.token = token
        self._save = save
        self._counter = token.counter
        self._last_step = -1

    def next_code(self, now: float) -> str:
        if self.token.mode == "hotp":
            counter, self._counter = self._counter, self._counter + 1
            if self._save is not None:
                self._save(self.token.with_counter(self._counter))
        else:
            counter = self._last_step = max(totp_step(now), self._last_step + 1)
        return hotp(self.token.key, counter, self.token.algorithm)


def match_choice(text: str, choices: tuple[FormChoice, ...]) -> FormChoice | None:
    """The option *text* names: its value exactly, else a label equal to it ignoring
    case, else the one label it begins (openconnect's match_choice_label). None if none
    or several do."""
    for choice in choices:
        if choice.value == text:
            return choice
    if not text:
        return None
    folded = text.casefold()
    partial = [c for c in choices if c.label.casefold().startswith(folded)]
    exact = [c for c in partial if len(c.label) == len(text)]
    if exact:
        return exact[0]
    return partial[0] if len(partial) == 1 else None


def _listing(choices: tuple[FormChoice, ...]) -> str:
    names = sorted({c.value or "''" for c in choices})
    return ", ".join(names[:32]) + (", …" if len(names) > 32 else "")


# How each field is answered: a value known now, the one-time code, or the terminal.
_Plan = tuple[Literal["value", "token", "ask"], str]


class Login:
    """The answers of one login (one login worker): which password line comes next, and
    whether ``--user`` and the one-time code were used."""

    def __init__(self, sources: AnswerSources, codes: TokenCodes | None = None) -> None:
        self.sources = sources
        self.codes = codes
        self._passwords_used = 0
        self._username_used = False
        self._token_used = False
        self._forms = 0

    def answer(self, form: LoginForm, now: float, ask: Ask | None) -> LoginAnswers:
        """An answer to every field of *form*, or Unanswerable / LoginCancelled. A form
        without a group list also gets --authgroup, for ``<group-select>`` (ocserv takes
        a plain-auth group of the user's it does not list; openconnect sends none).

        *ask* is the terminal, or None when nothing may be asked (none, --non-inter,
        or a login after the session first came up). *now* is the wall clock's time, for
        TOTP.
        """
        self._forms += 1
        if self._forms > MAX_FORMS:
            raise Unanswerable("protocol", f"the login did not finish within {MAX_FORMS} forms")
        plans = self._plan(form, ask is not None)
        for fld, (how, _) in zip(form.fields, plans, strict=True):
            if how == "ask" and ask is None:
                raise self._unanswered(form, fld)
        # (the banner is not among them: the session shows every form's banner itself)
        notes = tuple(t for t in (form.error, form.message) if t)
        values: dict[str, str] = {}
        for fld, (how, value) in zip(form.fields, plans, strict=True):
            if how == "ask":
                assert ask is not None
                values[fld.name] = self._ask(ask, fld, notes)
                notes = ()
            elif how == "value":
                values[fld.name] = value
        for fld, (how, _) in zip(form.fields, plans, strict=True):
            if how == "token":  # last: no code is used up by a form that is not sent
                assert self.codes is not None
                values[fld.name] = self.codes.next_code(now)
        has_list = any(f.name == GROUP_FIELD for f in form.fields)
        return LoginAnswers(
            answers=tuple(FieldAnswer(name=f.name, value=values[f.name]) for f in form.fields),
            group=None if has_list else self.sources.group or None,
        )

    # -- planning: which source answers which field (nothing is generated or asked) -------

    def _plan(self, form: LoginForm, can_ask: bool) -> list[_Plan]:
        plans: list[_Plan] = []
        for fld in form.fields:
            if fld.kind == "select":
                plans.append(self._plan_select(form, fld))
            elif fld.kind == "text":
                plans.append(self._plan_text(form, fld))
            else:
                plans.append(self._plan_password(form, fld, can_ask))
        return plans

    def _plan_select(self, form: LoginForm, fld: LoginField) -> _Plan:
        wanted = self.sources.group if fld.name == GROUP_FIELD else None
        if wanted is not None:
            choice = match_choice(wanted, fld.choices)
            if choice is None:
                raise Unanswerable(
                    "unknown_group",
                    f"Group {wanted!r} is not offered by the server (offered: "
                    f"{_listing(fld.choices)})",
                )
            return ("value", choice.value)
        entry = self.sources.entry(form.form_id, fld.name)
        if entry is not None:
            choice = match_choice(entry, fld.choices)
            if choice is None:
                raise Unanswerable(
                    "need_input",
                    f"--form-entry {form.form_id}:{fld.name}={entry}: not one choice of "
                    f'"{fld.label or fld.name}" (offered: {_listing(fld.choices)})',
                )
            return ("value", choice.value)
        if len(fld.choices) == 1:
            return ("value", fld.choices[0].value)  # openconnect takes the only option
        if fld.name == GROUP_FIELD and len(form.fields) == 1:
            # A form that asks for the group and nothing else has no server default:
            # ocserv's "Please select your group." when a client certificate names
            # several groups (its OUs, cert-group-oid). Its selected option, else the
            # first, as openconnect takes it.
            return ("value", next((c for c in fld.choices if c.selected), fld.choices[0]).value)
        return ("ask", "")

    def _plan_text(self, form: LoginForm, fld: LoginField) -> _Plan:
        username = self.sources.username
        if username is not None and not self._username_used and fld.name.startswith("user"):
            self._username_used = True
            return ("value", username)
        entry = self.sources.entry(form.form_id, fld.name)
        return ("ask", "") if entry is None else ("value", entry)

    def _plan_password(self, form: LoginForm, fld: LoginField, can_ask: bool) -> _Plan:
        entry = self.sources.entry(form.form_id, fld.name)
        if fld.name in PASSWORD_CHANGE:
            return ("ask", "") if entry is None else ("value", entry)
        index = self._passwords_used
        self._passwords_used += 1
        token = self.codes is not None and not self._token_used
        if token and (fld.name == TOKEN_FIELD or form.form_id == TOKEN_FORM):
            self._token_used = True
            return ("token", "")
        if index < len(self.sources.passwords):
            return ("value", self.sources.passwords[index])
        if entry is not None:
            return ("value", entry)
        if token and (index >= 1 or not can_ask):
            self._token_used = True
            return ("token", "")
        return ("ask", "")

    # -- the terminal ---------------------------------------------------------------------

    def _ask(self, ask: Ask, fld: LoginField, notes: tuple[str, ...]) -> str:
        label = fld.label or f"{fld.name}:"
        choices = tuple(c.label for c in fld.choices)
        for _ in range(_CHOICE_ATTEMPTS):
            try:
                text = ask(Prompt(label, fld.kind == "password", choices, notes))
            except EOFError:
                raise Unanswerable(
                    "need_input", f'no answer for "{label}": end of input on the terminal'
                ) from None
            if text is None:
                raise LoginCancelled
            if fld.kind != "select":
                return text
            choice = match_choice(text, fld.choices)
            if choice is not None:
                return choice.value
            notes = (f'"{text}" is not one of the choices (or more than one begins so)',)
        raise Unanswerable("need_input", f'no valid choice for "{label}"')

    def _unanswered(self, form: LoginForm, fld: LoginField) -> Unanswerable:
        reason = self.sources.no_prompt_reason or "nothing is asked when logging in again"
        where = f"form {form.form_id or '(without an id)'}, field {fld.name}"
        if fld.kind == "select":
            where += f"; offered: {_listing(fld.choices)}"
        hints: list[str] = []
        if fld.name == GROUP_FIELD:
            hints.append("--authgroup GROUP")
        elif fld.kind == "text" and fld.name.startswith("user"):
            hints.append("--user NAME")
        elif fld.kind == "password" and fld.name not in PASSWORD_CHANGE:
            hints += ["--passwd-on-stdin", "--credentials-file FILE"]
        if form.form_id:
            hints.append(f"--form-entry {form.form_id}:{fld.name}=VALUE")
        text = (
            f'the server asks for "{fld.label or fld.name}" ({where}) and nothing answers it '
            f"({reason})"
        )
        if hints:
            text += ": give " + (", ".join(hints[:-1]) + " or " if len(hints) > 1 else "")
            text += hints[-1]
        return Unanswerable("need_input", text)
