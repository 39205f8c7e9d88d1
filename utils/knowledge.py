"""Knowledge bases: a domain's prompts for CLIP to rank, grouped by category, each healthy or a defect.

File format (YAML or JSON):

    name: fruit                                  # optional, defaults to the file name
    domain: fruit                                # the noun captions use ("A fruit with ...")
    healthy_word: fresh                          # optional: "A fresh fruit with ..." (default fresh)
    template: "a photo of a {domain} with {prompt}"
    prompts:                                     # category -> list of prompts, in ranking order
      healthy:
        - {id: fresh, text: smooth unblemished skin, healthy: true}
      mold:
        - {id: green_mold, text: green mold, severity: severe}   # healthy defaults to false
    kinds:                                       # optional: the product kinds CLIP picks from, so captions
      - apple                                    # say "An apple with ..." instead of "A fruit with ..."
      - {id: pear, noun: pear, prompt: "a photo of a pear"}   # defaults: noun = id, prompt "a photo of a/an NOUN"
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

SEVERITIES = ("mild", "moderate", "severe")
BUILTIN = {"fruit": Path(__file__).with_name("fruit_knowledge.yaml"),
           "solar_cell": Path(__file__).with_name("solar_cell_knowledge.yaml")}
HEALTHY_WORD = "fresh"
SUFFIXES = (".yaml", ".yml", ".json")
_TOP_KEYS = ("name", "domain", "healthy_word", "template", "prompts", "kinds")
_PROMPT_KEYS = ("id", "text", "healthy", "severity")
_KIND_KEYS = ("id", "noun", "prompt")
_ID = re.compile(r"[A-Za-z0-9_.-]+")  # ids end up in CSV columns and file names
# Spelling says vowel but sound says consonant ("a unicorn"), and the reverse ("an hour").
_A_BEFORE = ("uni", "use", "usu", "uti", "ure", "eu", "ewe", "one", "once")
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")


class KnowledgeError(ValueError):
    """A knowledge base that cannot be used; the message names the file and the bad entry."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    category: str
    healthy: bool
    severity: str | None = None


@dataclass(frozen=True)
class Kind:
    """A product kind: the noun captions use ("apple") and the sentence CLIP ranks against the other kinds."""
    id: str
    noun: str
    prompt: str


@dataclass(frozen=True)
class KnowledgeBase:
    name: str
    domain: str
    template: str
    prompts: tuple[Prompt, ...]
    kinds: tuple[Kind, ...] = ()  # optional; without kinds captions use the domain noun
    healthy_word: str = HEALTHY_WORD  # how a caption calls a good item ("A fresh fruit", "A functional cell")

    def sentences(self) -> list[str]:
        """The texts fed to CLIP, one per prompt, in prompt order."""
        return [self.template.format(domain=self.domain, prompt=p.text) for p in self.prompts]

    def healthy_mask(self) -> list[bool]:
        return [p.healthy for p in self.prompts]

    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    def index(self, id: str) -> int:
        try:
            return self.ids().index(id)
        except ValueError:
            raise KeyError(f"no prompt {id!r} in knowledge base {self.name!r}") from None

    def kind_sentences(self) -> list[str]:
        """The texts CLIP ranks to pick the product kind, one per kind (empty without kinds)."""
        return [kind.prompt for kind in self.kinds]

    def kind(self, id: str) -> Kind:
        for kind in self.kinds:
            if kind.id == id:
                return kind
        known = ", ".join(k.id for k in self.kinds) or "none"
        raise KeyError(f"no kind {id!r} in knowledge base {self.name!r} (kinds: {known})")

    def categories(self) -> list[str]:
        return list(dict.fromkeys(p.category for p in self.prompts))

    def to_dict(self) -> dict:
        """The file format as plain data: dump it as YAML/JSON and load_knowledge reads it back equal."""
        groups = {}
        for p in self.prompts:
            entry = {"id": p.id, "text": p.text, "healthy": p.healthy}
            if p.severity:
                entry["severity"] = p.severity
            groups.setdefault(p.category, []).append(entry)
        data = {"name": self.name, "domain": self.domain, "template": self.template, "prompts": groups}
        if self.kinds:  # only when present: a base without kinds keeps the hash it always had
            data["kinds"] = [{"id": k.id, "noun": k.noun, "prompt": k.prompt} for k in self.kinds]
        if self.healthy_word != HEALTHY_WORD:  # only when set: the hashes of older bases stay as they were
            data["healthy_word"] = self.healthy_word
        return data

    def hash(self) -> str:
        """Short sha256 of what decides labels; the name is left out so a renamed copy stays compatible."""
        content = {k: v for k, v in self.to_dict().items() if k != "name"}
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> KnowledgeBase:
        """Validate parsed file content; errors read "<source>: prompts.mold[2]: missing 'text'"."""
        return _parse(data, source)


def load_knowledge(name_or_path: str | Path | KnowledgeBase = "fruit") -> KnowledgeBase:
    """A built-in base by name ("fruit") or a .yaml/.yml/.json file."""
    if isinstance(name_or_path, KnowledgeBase):
        return name_or_path
    path = BUILTIN.get(str(name_or_path)) or Path(name_or_path)
    if path.suffix.lower() not in SUFFIXES:
        raise KnowledgeError(f"{path}: neither a built-in knowledge base ({', '.join(BUILTIN)}) "
                             f"nor a {'/'.join(SUFFIXES)} file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KnowledgeError(f"{path}: cannot read: {e}") from e
    return KnowledgeBase.from_dict(_decode(text, path), source=str(path))


def dataset_knowledge(option, manifest: dict) -> str:
    """The knowledge base a bundle trained on labeled datasets records: `option` or the manifest's, refused
    when its hash differs from the one the datasets were labeled with. Files are stored as absolute paths."""
    name = option or manifest.get("knowledge") or "fruit"
    try:
        knowledge = load_knowledge(name)
    except KnowledgeError as error:
        if option:
            raise
        warnings.warn(f"the datasets' knowledge base {name!r} cannot be loaded here ({error}); the bundle "
                      "records the name as is (pass --knowledge FILE to fix)", stacklevel=2)
        return name
    expected = manifest.get("knowledge_hash")
    if expected and knowledge.hash() != expected:
        raise ValueError(f"knowledge base {name!r} has hash {knowledge.hash()} but the datasets were labeled with "
                         f"{expected}: captions and prompts would not match")
    return name if name in BUILTIN or not Path(name).is_file() else str(Path(name).resolve())


def _decode(text: str, path: Path):
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text, object_pairs_hook=_json_object)
        return yaml.load(text, Loader=_StrictLoader)
    except KnowledgeError as e:
        raise KnowledgeError(f"{path}: {e}") from e
    except json.JSONDecodeError as e:
        raise KnowledgeError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise KnowledgeError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', None) or e}") from e


def _json_object(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise KnowledgeError(f"duplicate key {k!r}")  # _decode adds the path
    return dict(pairs)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: plain YAML silently keeps the last (e.g. a category twice)."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return mapping


def _parse(data, source: str) -> KnowledgeBase:
    def fail(where, message):
        raise KnowledgeError(f"{source}: {where}: {message}" if where else f"{source}: {message}")

    if not isinstance(data, dict):
        fail("", "expected a mapping with 'domain', 'template' and 'prompts'")
    for key in data:
        if key not in _TOP_KEYS:
            fail(key, f"unknown key (expected {', '.join(_TOP_KEYS)})")
    name = _text(data.get("name", Path(source).stem), "name", fail)
    domain = _text(data.get("domain"), "domain", fail)
    template = _text(data.get("template"), "template", fail)
    if "{prompt}" not in template:
        fail("template", f"{template!r} has no {{prompt}} placeholder")
    try:
        template.format(domain=domain, prompt="x")
    except (KeyError, IndexError, ValueError) as e:
        fail("template", f"{template!r}: only {{domain}} and {{prompt}} may appear in braces ({e!r})")

    groups = data.get("prompts")
    if not isinstance(groups, dict) or not groups:
        fail("prompts", "expected a mapping of category -> list of prompts")
    prompts, first_seen = [], {}
    for category, entries in groups.items():
        if not isinstance(category, str) or not category.strip():
            fail(f"prompts.{category}", "category names must be non-empty strings")
        if not isinstance(entries, list) or not entries:
            fail(f"prompts.{category}", "expected a non-empty list of prompts")
        for i, entry in enumerate(entries):
            where = f"prompts.{category}[{i}]"
            prompt = _prompt(entry, category.strip(), where, fail)
            if prompt.id in first_seen:
                fail(where, f"duplicate id {prompt.id!r} (first at {first_seen[prompt.id]})")
            first_seen[prompt.id] = where
            prompts.append(prompt)
    if not any(p.healthy for p in prompts):
        fail("prompts", "no healthy prompts (mark at least one 'healthy: true' so a fresh item can come out fresh)")
    if all(p.healthy for p in prompts):
        fail("prompts", "no defect prompts (every prompt is marked 'healthy: true')")
    healthy_word = _text(data.get("healthy_word", HEALTHY_WORD), "healthy_word", fail)
    return KnowledgeBase(name, domain, template, tuple(prompts), _kinds(data.get("kinds"), fail),
                         healthy_word)


def _kinds(entries, fail) -> tuple[Kind, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list) or not entries:
        fail("kinds", "expected a non-empty list of kinds, e.g. [{id: apple}, {id: pear}]")
    kinds, first_seen = [], {}
    for i, entry in enumerate(entries):
        where = f"kinds[{i}]"
        kind = _kind(entry, where, fail)
        for key, value in (("id", kind.id), ("prompt", kind.prompt)):
            if (key, value) in first_seen:
                fail(where, f"duplicate {key} {value!r} (first at {first_seen[key, value]})")
            first_seen[key, value] = where
        kinds.append(kind)
    return tuple(kinds)


def _kind(entry, where, fail) -> Kind:
    if isinstance(entry, str):
        entry = {"id": entry}
    if not isinstance(entry, dict):
        fail(where, "expected a mapping with 'id' (and optionally 'noun' and 'prompt')")
    for key in entry:
        if key not in _KIND_KEYS:
            fail(where, f"unknown key {key!r} (expected {', '.join(_KIND_KEYS)})")
    if "id" not in entry:
        fail(where, "missing 'id'")
    id = _text(entry["id"], f"{where}.id", fail)
    if not _ID.fullmatch(id):
        fail(f"{where}.id", f"{id!r}: use only letters, digits, '_', '.' and '-'")
    noun = _text(entry.get("noun", id.replace("_", " ")), f"{where}.noun", fail)
    default_prompt = f"a photo of {indefinite_article(noun) or 'a'} {noun}"
    return Kind(id, noun, _text(entry.get("prompt", default_prompt), f"{where}.prompt", fail))


def indefinite_article(word: str) -> str | None:
    """ "a" or "an" for the next word, or None when it does not start with a letter (keep as written)."""
    word = word.lower().lstrip("\"'(")
    if not word[:1].isalpha():
        return None
    if word.startswith(_AN_BEFORE):
        return "an"
    return "an" if word[0] in "aeiou" and not word.startswith(_A_BEFORE) else "a"


def _prompt(entry, category, where, fail) -> Prompt:
    if not isinstance(entry, dict):
        fail(where, "expected a mapping with 'id' and 'text'")
    for key in entry:
        if key not in _PROMPT_KEYS:
            fail(where, f"unknown key {key!r} (expected {', '.join(_PROMPT_KEYS)})")
    for key in ("id", "text"):
        if key not in entry:
            fail(where, f"missing {key!r}")
    id = _text(entry["id"], f"{where}.id", fail)
    if not _ID.fullmatch(id):
        fail(f"{where}.id", f"{id!r}: use only letters, digits, '_', '.' and '-'")
    healthy = entry.get("healthy", False)
    if not isinstance(healthy, bool):
        fail(f"{where}.healthy", f"expected true or false, got {healthy!r}")
    severity = entry.get("severity")
    if severity is not None and severity not in SEVERITIES:
        fail(f"{where}.severity", f"unknown severity {severity!r} (expected {', '.join(SEVERITIES)})")
    if severity is not None and healthy:
        fail(f"{where}.severity", "a healthy prompt has no severity")
    return Prompt(id, _text(entry["text"], f"{where}.text", fail), category, healthy, severity)


def _text(value, where, fail) -> str:
    if not isinstance(value, str) or not value.strip():
        fail(where, "missing" if value is None else f"expected a non-empty string, got {value!r}")
    return value.strip()
