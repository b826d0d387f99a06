"""A config value checked at its key path: type, range, ${VAR:-default}; errors name the path and line."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from proxy.config import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Loader(yaml.SafeLoader):
    """YAML as safe_load reads it, but a decimal number with a point (a price, a rate) is the Decimal of
    its text: a float keeps 17 digits, so 0.28571428571428571428 (2/7, as bc writes it) would price calls
    at 0.2857142857142857."""


def _decimal_or_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal | float:
    try:
        number = Decimal(loader.construct_scalar(node).replace("_", ""))
    except InvalidOperation:
        number = None
    if number is not None and number.is_finite():
        return number
    return loader.construct_yaml_float(node)  # .inf, .nan and the base-60 forms, as YAML reads them


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal_or_float)


def load_yaml(text: str) -> Any:
    """The YAML document in `text`, its decimal numbers as Decimals (see _Loader)."""
    return yaml.load(text, Loader=_Loader)


class ConfigReader:
    """Walks the parsed YAML, turning problems into ConfigErrors that name the key path and line."""

    def __init__(
        self,
        source: str,
        lines: dict[tuple[str, ...], int],
        environ: Mapping[str, str],
        keep_unset: bool,
    ) -> None:
        self.source = source
        self.lines = lines
        self.environ = environ
        self.keep_unset = keep_unset

    def fail(self, path: tuple[str, ...], problem: str) -> ConfigError:
        where = ".".join(path) or "(top level)"
        # A missing key has no line of its own: give its mapping's (but not the whole file's, line 1).
        paths = [path, *(path[:end] for end in range(len(path) - 1, 0, -1))]
        lines = [self.lines[key_path] for key_path in paths if key_path in self.lines]
        at = f" (line {lines[0]})" if lines else ""
        return ConfigError(f"{self.source}: {where}{at}: {problem}")

    def mapping(self, value: Any, path: tuple[str, ...], allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping of keys to values, got {show(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be text, got {show(key)}")
            if allowed is not None and key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail((*path, key), f"unknown key; known keys here: {known}")
        return value

    def text(self, value: Any, path: tuple[str, ...]) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
            raise self.fail(path, f"must be text, got {show(value)}")
        return self.expand(str(value), path)

    def expand(self, value: str, path: tuple[str, ...], *, keep_unset: bool | None = None) -> str:
        keep = self.keep_unset if keep_unset is None else keep_unset

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            if keep:
                return match.group(0)
            raise self.fail(path, f"${{{name}}} names an unset environment variable; set {name} or remove it")

        return _ENV_REF.sub(substitute, value)

    def scalar(self, value: Any, path: tuple[str, ...]) -> Any:
        """A number or true/false given as ${VAR}: the variable's value, read as YAML reads a plain one.

        An unset variable without a default fails even for reports: no text stands in for a number.
        """
        if not isinstance(value, str) or _ENV_REF.search(value) is None:
            return value
        text = self.expand(value, path, keep_unset=False)
        try:
            loaded = load_yaml(text)
        except yaml.YAMLError:
            return text
        return loaded if isinstance(loaded, (bool, int, float, Decimal)) else text

    def number(self, value: Any, path: tuple[str, ...], *, positive: bool = False) -> Decimal:
        value = self.scalar(value, path)
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise self.fail(path, f"must be a number, got {show(value)}{_as_text_hint(value)}")
        # A float is a default here, or .inf or .nan from the file; repr() is its shortest round-trip form:
        # 2.5 -> Decimal('2.5'), not 2.5000000000000000001.
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        # Past a float's range is infinite too: a timeout is used as a float, and a cost cannot be written.
        if not number.is_finite() or math.isinf(number) or number < 0 or (positive and number == 0):
            kind = "a positive" if positive else "a non-negative"
            raise self.fail(path, f"must be {kind} number, got {show(value)}")
        return number

    def whole(self, value: Any, path: tuple[str, ...], what: str, minimum: int = 0) -> int:
        """An int of at least `minimum`; `what` names it in the error ("a whole number of seconds")."""
        value = self.scalar(value, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(path, f"must be {what}, got {show(value)}")
        return value

    def boolean(self, value: Any, path: tuple[str, ...]) -> bool:
        value = self.scalar(value, path)
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {show(value)}")
        return value

    def currency(self, value: Any, path: tuple[str, ...]) -> str:
        code = self.text(value, path).upper()
        if not re.fullmatch(r"[A-Z]{3}", code):
            raise self.fail(path, f"must be a three-letter currency code such as USD, got {show(value)}")
        return code


def show(value: Any) -> str:
    """A value as a problem names it: its type and repr ("str 'abc'"; a decimal number is YAML's float:
    "float 1.5"), or "nothing"."""
    if isinstance(value, Decimal):
        return f"float {value}"
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"


def _as_text_hint(value: Any) -> str:
    """Why a number YAML left as text is not one: quoted, or an exponent YAML 1.1 does not take (it reads
    1e-6 and 1.5e6 as text, only 1.5e-6 and 1.5e+6 as numbers), which looks like a number to its writer."""
    try:
        number = Decimal(value) if isinstance(value, str) else None
    except InvalidOperation:
        return ""
    if number is None or not number.is_finite():
        return ""
    return "; YAML reads this as text: write the number unquoted, in plain decimals (0.000001, not 1e-6)"


def line_map(node: yaml.Node | None, source: str) -> dict[tuple[str, ...], int]:
    """The line of each key path in a composed YAML document; a key given twice is a ConfigError."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, str(key_node.value))
                line = key_node.start_mark.line + 1
                # PyYAML keeps the last of two equal keys; a model pasted twice would silently take
                # the later price, so a repeated key is an error (YAML requires unique keys).
                if key_path in lines:
                    where, first = ".".join(key_path), lines[key_path]
                    raise ConfigError(f"{source}: {where} (line {line}): repeats the key on line {first}")
                lines[key_path] = line
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, str(index)))

    if node is not None:
        walk(node, ())
    return lines
