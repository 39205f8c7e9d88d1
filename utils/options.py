"""Option dataclasses declared once: defaults and help live in the fields, flags and config files follow.

    @dataclass
    class Options:
        epochs: int = option(10, "passes over the training split")
        device: str = option("auto", "auto, cpu, cuda or cuda:N")

    add_arguments(parser, Options)              # --epochs, --device with their help and defaults
    opts = from_namespace(Options, parser.parse_args())
    opts = from_dict(Options, yaml_values, "run.yaml")   # unknown keys are named, not ignored

A field whose default is another option dataclass (e.g. the captioner's own config) adds its flags too
and is rebuilt as a whole. Light on purpose (stdlib only): scripts build their parser before importing torch.
"""
import argparse
import dataclasses
import json
from pathlib import Path


def option(default, help, **flag):
    """A dataclass field with its --help text (and optional argparse settings: choices, type, metavar)."""
    metadata = {"help": help, **flag}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _copy(value):
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)


def from_dict(cls, values, source="options"):
    """cls(**values) after naming unknown keys; nested option dataclasses are filled from the same dict."""
    values = {str(key).replace("-", "_"): value for key, value in (values or {}).items()}
    known = set(flag_names(cls))
    unknown = sorted(set(values) - known - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} (known: {', '.join(sorted(known))})")
    return _build(cls, values)


def _build(cls, values):
    kwargs = {}
    for field in dataclasses.fields(cls):
        nested = _nested_type(field)
        if nested is not None:
            given = values.get(field.name)
            inner = given if isinstance(given, dict) else {k: v for k, v in values.items() if k in flag_names(nested)}
            kwargs[field.name] = given if dataclasses.is_dataclass(given) else _build(nested, inner)
        elif field.name in values:
            kwargs[field.name] = _coerce(field, values[field.name])
    return cls(**kwargs)


def _coerce(field, value):
    if isinstance(_default(field), tuple) and isinstance(value, (list, str)):
        return split_list(value) if isinstance(value, str) else tuple(value)
    return value


def _default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else None


def _nested_type(field):
    default = _default(field)
    return type(default) if dataclasses.is_dataclass(default) else None


def flag_names(cls):
    """Every option name a flag or config key may set, nested dataclasses flattened."""
    names = []
    for field in dataclasses.fields(cls):
        nested = _nested_type(field)
        if nested is not None:
            names += flag_names(nested)
        elif "help" in field.metadata:
            names.append(field.name)
    return names


def add_arguments(parser, cls, skip=()):
    """One flag per documented field (fields without help are internal); nested dataclasses get a group."""
    for field in dataclasses.fields(cls):
        nested = _nested_type(field)
        if nested is not None:
            group = parser.add_argument_group(field.metadata.get("help", field.name))
            add_arguments(group, nested, skip)
        elif "help" in field.metadata and field.name not in skip:
            _add_flag(parser, field)
    return parser


def _add_flag(parser, field):
    flag = "--" + field.name.replace("_", "-")
    meta = dict(field.metadata)
    help_text = meta.pop("help")
    default = _default(field)
    if meta.get("required"):
        meta.pop("required")
        parser.add_argument(flag, required=True, help=help_text + " (required)", **meta)
    elif isinstance(default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif isinstance(default, tuple):
        meta.setdefault("type", split_list)
        parser.add_argument(flag, default=default, help=f"{help_text}; comma-separated (default: "
                            f"{','.join(map(str, default)) or 'none'})", **meta)
    else:
        meta.setdefault("type", type(default) if default is not None else str)
        shown = "none" if default in (None, "") else default
        parser.add_argument(flag, default=default, help=f"{help_text} (default: {shown})", **meta)


def split_list(text):
    """'a,b' -> ('a', 'b'); numbers become ints; '' or 'none' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    parts = [part.strip() for part in text.split(",") if part.strip()]
    return tuple(int(part) if part.lstrip("-").isdigit() else part for part in parts)


def from_namespace(cls, args):
    """The dataclass filled from parsed flags (fields without a flag keep their defaults)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return _build(cls, {k: v for k, v in values.items() if k in flag_names(cls)})


def apply_config_file(parser, path, cls):
    """A YAML/JSON file of option: value becomes the parser's defaults, so flags on the command line win."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        parser.error(f"--config {path}: {error}")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    known = set(flag_names(cls)) | {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known - {"help", "config"})
    if unknown:
        parser.error(f"--config {path}: unknown keys {unknown}; known: {', '.join(sorted(flag_names(cls)))}")
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False  # the file gives it


def parse_with_config_file(parser, cls, argv=None):
    """parser.parse_args(argv), with the defaults first taken from the YAML/JSON file its --config names."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config")
    first, _ = config.parse_known_args(argv)
    if first.config:
        apply_config_file(parser, first.config, cls)
    return parser.parse_args(argv)


def as_plain(options):
    """Options as they read back from JSON (tuples become lists): saved and current ones compare equal."""
    return json.loads(json.dumps(dataclasses.asdict(options)))
