"""The predictor's bearer tokens, as ``[predictor]`` configures them (``tokens_file`` and
``tokens``): read and checked here, where the predictor, the CLI and the local stack's
Prometheus all find them.

One entry a line in the file, ``TOKEN SCOPE``; ``#`` starts a comment. ``read`` opens the
model routes, ``admin`` those too and the admin routes (``/metrics``, the token reload).

>>> from flowlearn.conf import PredictorConf
>>> [t.scope for t in read_tokens(PredictorConf(tokens=("s3cr3t-s3cr3t-s3cr3t admin",)))]
['admin']

A message about a token names its file and line, never the token.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from flowlearn.conf.settings import ConfigError, PredictorConf

READ, ADMIN = "read", "admin"
SCOPES = (READ, ADMIN)
#: The shortest token taken: guessing one must be hopeless (``openssl rand -hex 32`` makes
#: 64 characters).
MIN_TOKEN_CHARS = 16
#: RFC 6750's b64token: what an ``Authorization: Bearer`` header can carry as it is.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_FORMAT = (
    f"expected 'TOKEN SCOPE': a token of at least {MIN_TOKEN_CHARS} characters "
    f"(letters, digits, - . _ ~ + /, then = padding), then {' or '.join(SCOPES)}"
)


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    scope: str


def _parse(entry: str, where: str) -> Token | None:
    """One entry (None: blank or a comment); ``where`` names it in errors."""
    words = entry.split("#", 1)[0].split()
    if not words:
        return None
    if len(words) != 2 or words[1] not in SCOPES:
        raise ConfigError(f"{where}: {_FORMAT}")
    value, scope = words
    if len(value) < MIN_TOKEN_CHARS or _TOKEN.fullmatch(value) is None:
        raise ConfigError(f"{where}: {_FORMAT}")
    return Token(value, scope)


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        raise ConfigError(
            f"predictor.tokens_file {path}: readable by every user (mode "
            f"{stat.S_IMODE(mode):04o}); chmod 600 it (640 to share it with a group)"
        )


def read_tokens(conf: PredictorConf) -> tuple[Token, ...]:
    """The tokens of ``conf``: the file's in order, then the setting's. ConfigError for an
    entry that is not ``TOKEN SCOPE``, a token given twice, or a file other users can read."""
    entries: list[tuple[str, str]] = []
    if conf.tokens_file:
        path = Path(conf.tokens_file)
        try:
            _check_private(path)
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"predictor.tokens_file {path}: cannot read: {exc}") from None
        except UnicodeDecodeError:  # its message would quote bytes of the file
            raise ConfigError(f"predictor.tokens_file {path}: not UTF-8 text") from None
        entries += [(f"predictor.tokens_file {path} line {i}", s) for i, s in enumerate(lines, 1)]
    entries += [(f"predictor.tokens entry {i}", s) for i, s in enumerate(conf.tokens, 1)]
    tokens: list[Token] = []
    first_seen: dict[str, str] = {}
    for where, entry in entries:
        token = _parse(entry, where)
        if token is None:
            continue
        if token.value in first_seen:
            raise ConfigError(f"{where}: the same token as {first_seen[token.value]}")
        first_seen[token.value] = where
        tokens.append(token)
    return tuple(tokens)
