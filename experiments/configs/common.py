"""The argument parser shared by the config files (`--config=<file>.py:<arg>`).

After big_vision's `configs/common.py:parse_arg`: the part after the colon
is a comma-separated list of tokens, each either

* a bare option of a `Choice` (`vit_s`, `ptbxl`, `bf16`, `linear`),
* the name of a boolean argument (`smoke`: True),
* an alias that stands for `name=value` (`100hz`: `fs=100`), or
* a typed `name=value` (`fs=250`, `smoke=false`, `variant=vit_b`).

Choices come from the registries (model variants, data mixtures), so a new
variant or mixture is a valid token without touching the config files.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

TRUE, FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


@dataclasses.dataclass(frozen=True)
class Choice:
    """An argument taking one of named options.

    Attributes:
      options: token -> the value it stands for.
      default: the token used when none is given; None makes it required.
    """
    options: Mapping[str, Any]
    default: str | None = None


def to_bool(text: str) -> bool:
    """'true'/'1'/'yes'/'on' -> True, 'false'/'0'/'no'/'off' -> False."""
    t = text.strip().lower()
    if t in TRUE or t in FALSE:
        return t in TRUE
    raise ValueError(f'{text!r} is not a boolean; use one of {TRUE + FALSE}')


def _converter(default: Any) -> tuple[Any, Callable[[str], Any]]:
    if isinstance(default, tuple):
        return default
    if isinstance(default, bool):
        return default, to_bool
    return default, type(default)


def _expand(arg: str | None, aliases: Mapping[str, str], spec: Mapping[str, Any]
            ) -> list[tuple[str, str, str]]:
    """(name, value text, token as written) of every token, bare tokens resolved."""
    by_option = {opt: name for name, s in spec.items() if isinstance(s, Choice)
                 for opt in s.options}
    pairs = []
    for token in (t.strip() for t in (arg or '').split(',')):
        if not token:
            continue
        if '=' not in token and token.lower() in aliases:
            token = aliases[token.lower()]
        if '=' in token:
            name, value = (p.strip() for p in token.split('=', 1))
        elif token.lower() in by_option:
            name, value = by_option[token.lower()], token.lower()
        elif token.lower() in spec and not isinstance(spec[token.lower()], Choice):
            name, value = token.lower(), 'true'
        else:
            raise ValueError(f'unknown config token {token!r} in {arg!r}; known tokens: '
                             f'{known_tokens(aliases, spec)}')
        if name not in spec:
            raise ValueError(f'unknown config argument {name!r} in {arg!r}; known: '
                             f'{sorted(spec)}')
        pairs.append((name, value, token))
    return pairs


def known_tokens(aliases: Mapping[str, str], spec: Mapping[str, Any]) -> str:
    """A one-line description of what a config argument accepts."""
    parts = []
    for name, s in spec.items():
        if isinstance(s, Choice):
            parts.append(f'{name}: {" | ".join(s.options)}')
        else:
            default, _ = _converter(s)
            parts.append(f'{name}=<{type(default).__name__}>')
    parts += [f'{a} (= {v})' for a, v in aliases.items()]
    return '; '.join(parts)


def parse_arg(arg: str | None, *, aliases: Mapping[str, str] | None = None,
              **spec: Any) -> ml_collections.ConfigDict:
    """Parses a config file's argument into typed values.

    Args:
      arg: the text after the colon of `--config=<file>.py:<arg>`.
      aliases: bare tokens that stand for `name=value`.
      **spec: argument name -> a `Choice`, a default value (its type converts
        the text; bools accept true/false), or a `(default, converter)` pair.

    Returns:
      A ConfigDict of every argument: a Choice's value (what its token
      stands for), or the converted or default value.

    Raises:
      ValueError: for an unknown token, an argument given twice, a value that
        does not convert, or a required Choice left out.
    """
    aliases = {k.lower(): v for k, v in (aliases or {}).items()}
    given: dict[str, tuple[str, str]] = {}
    for name, value, token in _expand(arg, aliases, spec):
        if name in given:
            raise ValueError(f'config argument {name!r} given twice in {arg!r}: '
                             f'{given[name][1]!r} and {token!r}')
        given[name] = (value, token)
    out = ml_collections.ConfigDict()
    for name, s in spec.items():
        value = given.get(name, (None, None))[0]
        if isinstance(s, Choice):
            option = value.lower() if value is not None else s.default
            if option is None:
                raise ValueError(f'config argument {name!r} is required in {arg!r}: name one '
                                 f'of {list(s.options)}')
            if option not in s.options:
                raise ValueError(f'{name}={value!r} in {arg!r}: choose from {list(s.options)}')
            out[name] = s.options[option]
            continue
        default, convert = _converter(s)
        try:
            out[name] = default if value is None else convert(value)
        except ValueError as e:
            raise ValueError(f'config argument {name}={value!r} in {arg!r}: {e}') from None
    return out
