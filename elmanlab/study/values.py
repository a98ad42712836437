"""A study file's keys and values, checked as it is read (:mod:`elmanlab.study.spec` builds the jobs
from them): the YAML loaded into a mapping, unknown keys named with the closest known one, model
options and train settings coerced by their field types, sizes (``params``) and ``seeds``. Each
problem is one ElmanlabError that says where in the file it is.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

from elmanlab.config import field_type, option_fields, train_settings
from elmanlab.errors import ElmanlabError


def suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def load_yaml(path: Path):
    import yaml
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ElmanlabError(f"study file {path} does not exist")
    except OSError as e:
        raise ElmanlabError(f"cannot read study file {path}: {e.strerror}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ElmanlabError(f"{path}: malformed YAML{where}: {problem}; fix the file")
    if not isinstance(data, dict):
        raise ElmanlabError(f"{path}: a study file is a mapping with keys such as name, train, runs, "
                            f"grid (got {type(data).__name__})")
    return data


def check_keys(d: dict, allowed, where: str, what: str) -> None:
    for k in d:
        if k not in allowed:
            raise ElmanlabError(f"{where}: unknown {what} key {k!r}{suggest(str(k), allowed)}; "
                                f"allowed: {', '.join(allowed)}")


def all_option_names() -> list[str]:
    from elmanlab.layers import FAMILIES
    names: list[str] = []
    for fam in FAMILIES.values():
        for f in dataclasses.fields(fam.Options):
            if f.name not in names:
                names.append(f.name)
    return names


def coerce_option(model: str, key: str, value, where: str):
    typ = field_type(option_fields(model)[key])
    if typ is bool:
        if not isinstance(value, bool):
            raise ElmanlabError(f"{where}: option {key} is true or false, got {value!r}")
        return value
    if value is None:
        return None
    try:
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
    except (TypeError, ValueError):
        raise ElmanlabError(f"{where}: option {key} must be {'an integer' if typ is int else 'a number'}, "
                            f"got {value!r}")
    return value


def coerce_train(key: str, value, where: str):
    """A train setting's value by its field type: bool a YAML bool, int an integral number, float
    any number (PyYAML reads 3e-4 as a string), str as written."""
    typ = field_type(train_settings()[key])
    if typ is bool:
        if not isinstance(value, bool):
            raise ElmanlabError(f"{where}: {key} is true or false, got {value!r}")
        return value
    if value is None or isinstance(value, (dict, list)):
        raise ElmanlabError(f"{where}: {key} needs one value, got {value!r}")
    if typ is str:
        return str(value)
    try:
        if isinstance(value, bool):
            raise ValueError
        if typ is int and isinstance(value, int):
            return value
        number = float(str(value))
        if typ is float:
            return number
        if not number.is_integer():
            raise ValueError
        return int(number)
    except ValueError:
        raise ElmanlabError(f"{where}: {key} must be {'an integer' if typ is int else 'a number'}, "
                            f"got {value!r}")


def norm_params(value, where: str) -> str:
    from elmanlab.sizing import format_count, parse_count
    try:
        n = parse_count(value)
    except ElmanlabError as e:
        raise ElmanlabError(f"{where}: {e}")
    if n < 1:
        raise ElmanlabError(f"{where}: params must be positive, got {value!r}")
    s = str(value).strip()
    # keep what the user wrote when it is already a compact count ("500M"), else a compact form
    return s.upper() if re.fullmatch(r"[0-9.]+[kKmMgGbBtT]?", s) and len(s) <= 8 else format_count(n)


def parse_seeds(value, where: str) -> list | None:
    if value is None:
        return None
    vals = value if isinstance(value, list) else [value]
    if not vals or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ElmanlabError(f"{where}: seeds is a list of integers such as [42, 43], got {value!r}")
    return vals
