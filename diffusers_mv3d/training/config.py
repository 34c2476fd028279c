"""Command-line flags made from a settings dataclass, and settings files.

A trainer keeps all its settings in one dataclass whose fields carry a docstring each (a string
literal on the line after the field, as in the example below). :func:`add_dataclass_arguments` turns
every field into a flag with that docstring as ``help`` and the default shown; it also adds
``--config FILE`` (a YAML or JSON mapping of field names to values) and ``--dry-run``.
:func:`config_from_args` resolves the values, lowest to highest precedence::

    dataclass default  <  --config FILE  <  flags given on the command line

and builds the dataclass (whose ``__post_init__`` validates and raises ``ValueError`` naming the
flag, see :func:`flag_name`).

Example::

    @dataclass
    class TrainConfig:
        learning_rate: float = 1e-3
        \"\"\"Peak learning rate of AdamW.\"\"\"
        sizes: Tuple[int, ...] = (32, 64)
        \"\"\"Channels per level.\"\"\"

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    args = parser.parse_args(["--config", "tiny.yaml", "--learning-rate", "3e-4"])
    cfg = config_from_args(TrainConfig, args)
    if args.dry_run:
        print(config_to_yaml(cfg))

Supported field types: ``int``, ``float``, ``str``, ``bool`` (``--flag`` / ``--no-flag``),
``Optional[...]`` of those (``none`` on the command line, ``null`` in a file), and
``Tuple[X, ...]`` (several values after the flag; ``--flag`` with none gives the empty tuple).
"""

import argparse
import ast
import dataclasses
import inspect
import json
import os
import shlex
import textwrap
import typing
import warnings
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

T = TypeVar("T")

__all__ = [
    "add_dataclass_arguments",
    "command_line",
    "config_from_args",
    "config_to_dict",
    "config_to_yaml",
    "field_docs",
    "flag_name",
    "load_config_file",
    "renamed_setting",
    "resolve_or_exit",
    "save_config",
]


def flag_name(field: str) -> str:
    """The command-line flag of a dataclass field: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + field.replace("_", "-")


def field_docs(cls: type) -> Dict[str, str]:
    """Field name -> its docstring (the string literal right after the field in the class body).

    Falls back to ``field(metadata={"help": ...})`` where a field has no docstring.
    """
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    for f in dataclasses.fields(cls):
        if f.name not in docs and "help" in f.metadata:
            docs[f.name] = f.metadata["help"]
    return docs


def _unwrap_optional(tp: Any) -> Tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any, optional: bool, flag: str):
    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{flag} expects true or false, got {text!r}")
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {tp.__name__}, got {text!r}") from None

    parse.__name__ = getattr(tp, "__name__", str(tp))
    return parse


def _field_types(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add one flag per field of the dataclass ``cls``, plus ``--config`` and ``--dry-run``.

    Flags default to ``argparse.SUPPRESS`` so that :func:`config_from_args` can tell the flags that
    were given (which override ``--config``) from those that were not; ``--help`` still shows the
    dataclass default.
    """
    hints = _field_types(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} settings")
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a .yaml/.yml or .json file of settings (field names as keys); flags given on the command line override it",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved settings (YAML) and exit without doing anything"
    )
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = flag_name(f.name)
        default = _field_default(f)
        help_text = docs.get(f.name, "")
        if default is not None:  # an unset setting's help says what unset means
            help_text = f"{help_text} (default: {_show(default)})".strip()
        tp, optional = _unwrap_optional(hints[f.name])
        origin = typing.get_origin(tp)
        if origin in (tuple, list):
            args = typing.get_args(tp)
            item = args[0] if args else str
            item, item_optional = _unwrap_optional(item)
            group.add_argument(
                flag,
                dest=f.name,
                nargs="*",
                type=_scalar_parser(item, item_optional, flag),
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=item.__name__.upper(),
            )
        elif tp is bool and not optional:
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif tp in (int, float, str, bool):
            group.add_argument(
                flag,
                dest=f.name,
                type=_scalar_parser(tp, optional, flag),
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=tp.__name__.upper(),
            )
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported field type {hints[f.name]!r}")
    return parser


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) if value else "(none)"
    return str(value)


class _DictWithKeys(dict):
    """A JSON object that also keeps its keys as written, repeats included (``json``'s ``object_pairs_hook``)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.keys_as_written = [key for key, _ in pairs]


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON settings file into a dict (keys may use - or _)."""
    if not os.path.isfile(path):
        raise ValueError(f"--config: no such file {path!r}")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith((".yaml", ".yml")):
        import yaml  # PyYAML, installed with huggingface_hub

        loader = yaml.SafeLoader(text)  # one parse: the node tree gives the keys as written, then the values
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
        keys = [key.value for key, _ in node.value] if isinstance(node, yaml.MappingNode) else []
    elif path.endswith(".json"):
        data = json.loads(text, object_pairs_hook=_DictWithKeys)
        keys = data.keys_as_written if isinstance(data, _DictWithKeys) else []
    else:
        raise ValueError(f"--config: expected a .yaml, .yml or .json file, got {path!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path!r} must hold a mapping of setting names to values")
    names = [str(key).replace("-", "_") for key in keys]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--config: {path!r} sets {', '.join(repeated)} more than once (one value a setting)")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Give a value read from a file the field's type (lists -> tuples, ints -> floats)."""
    tp, optional = _unwrap_optional(_field_types(cls)[name])
    flag = flag_name(name)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{flag} may not be null")
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if isinstance(value, (str, int, float, bool)):
            value = [value]
        args = typing.get_args(tp)
        item, item_optional = _unwrap_optional(args[0] if args else str)
        return tuple(_coerce_scalar(item, item_optional, v, flag) for v in value)
    return _coerce_scalar(tp, optional, value, flag)


def _coerce_scalar(tp: Any, optional: bool, value: Any, flag: str) -> Any:
    if value is None and optional:
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _scalar_parser(bool, optional, flag)(value)
        raise ValueError(f"{flag} expects true or false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            pass
    raise ValueError(f"{flag} expects {tp.__name__}, got {value!r}")


def config_from_args(cls: Type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from its defaults, then ``args.config`` (if any), then the flags given."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    values: Dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        for key, value in load_config_file(config_path).items():
            key = renamed_setting(cls, key, f"--config {config_path}")
            if key not in names:
                raise ValueError(f"--config {config_path}: unknown setting {key!r} (no flag {flag_name(key)})")
            values[key] = _coerce(cls, key, value)
    for name in names:
        if name in vars(args):
            value = getattr(args, name)
            values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def renamed_setting(cls: type, name: str, where: str) -> str:
    """The current name of setting ``name`` (``cls.renamed_settings`` maps old names to new ones), with a
    warning naming both when it was renamed; ``where`` says what used the old name."""
    new = getattr(cls, "renamed_settings", {}).get(name)
    if new is None:
        return name
    warnings.warn(f"{where}: setting {name!r} was renamed {new!r} (flag {flag_name(new)}); read as {new!r}",
                  FutureWarning)
    return new


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """The dataclass as a plain dict (tuples as lists), ready for JSON or YAML."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_to_yaml(cfg: Any) -> str:
    """The dataclass as YAML with each field's docstring as a comment above it."""
    import yaml

    docs = field_docs(type(cfg))
    lines = []
    for name, value in config_to_dict(cfg).items():
        if name in docs:
            lines.extend("# " + line for line in textwrap.wrap(docs[name], 96))
        lines.append(yaml.safe_dump({name: value}, default_flow_style=False, sort_keys=False, width=1000).rstrip())
    return "\n".join(lines) + "\n"


def save_config(cfg: Any, path: str) -> None:
    """Write the dataclass to ``path`` as YAML (``.yaml``/``.yml``) or JSON."""
    text = config_to_yaml(cfg) if path.endswith((".yaml", ".yml")) else json.dumps(config_to_dict(cfg), indent=2)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def resolve_or_exit(cls: Type[T], args: argparse.Namespace) -> Optional[T]:
    """:func:`config_from_args`, printing the YAML and returning ``None`` when ``--dry-run`` was given."""
    cfg = config_from_args(cls, args)
    if getattr(args, "dry_run", False):
        print(config_to_yaml(cfg), end="")
        return None
    return cfg


def command_line(program: str, cfg: Any) -> str:
    """``program`` followed by a flag for every field of ``cfg`` that differs from its default.

    Running the returned string gives the same resolved settings as ``cfg`` (no ``--config`` file
    needed), e.g. ``diffusers-mv3d train --max-train-steps 3 --no-push-to-hub``.
    """
    defaults = type(cfg)()
    words = shlex.split(program)
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        if value == default:
            continue
        flag = flag_name(f.name)
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (tuple, list)):
            words.append(flag)
            words.extend(str(v) for v in value)
        else:
            words.extend([flag, "none" if value is None else str(value)])
    return shlex.join(words)
