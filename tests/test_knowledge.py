import json

import pytest
import yaml

from utils.knowledge import KnowledgeBase, KnowledgeError, Prompt, load_knowledge

DEFECTS = {"green_mold": "mold", "blue_mold": "mold", "white_mold": "mold", "black_mold": "mold",
           "dark_spots": "spots", "bruise": "bruise", "rot": "rot", "wrinkles": "wrinkles", "cut": "cut",
           "scar": "scar"}


def small_base():
    return {"name": "tiny", "domain": "pear", "template": "a photo of a {domain} with {prompt}",
            "prompts": {"healthy": [{"id": "ok", "text": "smooth skin", "healthy": True}],
                        "mold": [{"id": "mold", "text": "grey mold", "severity": "severe"},
                                 {"id": "spots", "text": "black spots"}]}}


def write(tmp_path, data, name="kb.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_builtin_fruit_base_matches_the_shared_ids():
    kb = load_knowledge()
    assert kb == load_knowledge("fruit")
    assert kb.name == "fruit" and kb.domain == "fruit"
    assert [p.id for p in kb.prompts if p.healthy] == ["fresh", "ripe"]
    assert {p.id: p.category for p in kb.prompts if not p.healthy} == DEFECTS
    assert kb.categories() == ["healthy", "mold", "spots", "bruise", "rot", "wrinkles", "cut", "scar"]
    assert kb.healthy_mask() == [p.healthy for p in kb.prompts] and sum(kb.healthy_mask()) == 2
    assert kb.ids()[kb.index("cut")] == "cut"
    assert kb.sentences()[kb.index("green_mold")] == "a photo of a fruit with green mold"
    assert len(set(kb.sentences())) == len(kb.prompts)
    assert load_knowledge(kb) is kb


def test_unknown_id_raises_key_error():
    with pytest.raises(KeyError, match="nope"):
        load_knowledge().index("nope")


@pytest.mark.parametrize("name,dump", [("kb.yaml", lambda d: yaml.safe_dump(d, sort_keys=False)),
                                       ("kb.yml", lambda d: yaml.safe_dump(d, sort_keys=False, default_flow_style=True)),
                                       ("kb.json", json.dumps)])
def test_round_trip_through_a_file(tmp_path, name, dump):
    kb = load_knowledge()
    path = write(tmp_path, dump(kb.to_dict()), name)
    again = load_knowledge(path)
    assert again == kb and again.hash() == kb.hash()
    assert load_knowledge(str(path)) == kb


def test_defaults_and_normalisation(tmp_path):
    data = small_base()
    del data["name"]
    data["prompts"]["mold"][1]["text"] = "  black spots \n"
    kb = load_knowledge(write(tmp_path, data, "pears.yaml"))
    assert kb.name == "pears"
    assert kb.prompts[2] == Prompt("spots", "black spots", "mold", False, None)
    assert kb.sentences() == ["a photo of a pear with smooth skin", "a photo of a pear with grey mold",
                              "a photo of a pear with black spots"]


def test_hash_is_stable_and_tracks_content():
    data = small_base()
    kb = KnowledgeBase.from_dict(data)
    assert kb.hash() == KnowledgeBase.from_dict(json.loads(json.dumps(data))).hash()
    assert len(kb.hash()) == 16 and int(kb.hash(), 16) >= 0
    reordered_keys = {k: data[k] for k in reversed(list(data))}
    assert KnowledgeBase.from_dict(reordered_keys).hash() == kb.hash()
    assert KnowledgeBase.from_dict({**data, "name": "renamed"}).hash() == kb.hash()

    def changed(edit):
        copy = json.loads(json.dumps(data))
        edit(copy)
        return KnowledgeBase.from_dict(copy).hash()

    assert changed(lambda d: d["prompts"]["mold"][0].update(text="gray mold")) != kb.hash()
    assert changed(lambda d: d["prompts"]["mold"][1].update(severity="mild")) != kb.hash()
    assert changed(lambda d: d["prompts"]["mold"][1].update(healthy=True)) != kb.hash()
    assert changed(lambda d: d["prompts"]["mold"].reverse()) != kb.hash()
    assert changed(lambda d: d.update(template="{domain}: {prompt}")) != kb.hash()
    assert changed(lambda d: d.update(domain="apple")) != kb.hash()


def _set(path, value):
    def edit(data):
        *parents, last = path
        node = data
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


DELETE = object()
BAD = [
    (_set(["prompts", "mold", 1, "text"], DELETE), "prompts.mold[1]: missing 'text'"),
    (_set(["prompts", "mold", 0, "id"], DELETE), "prompts.mold[0]: missing 'id'"),
    (_set(["prompts", "mold", 1, "text"], "  "), "prompts.mold[1].text: expected a non-empty string"),
    (_set(["prompts", "mold", 1, "id"], "ok"), "prompts.mold[1]: duplicate id 'ok' (first at prompts.healthy[0])"),
    (_set(["prompts", "mold", 1, "id"], "black spots"), "prompts.mold[1].id: 'black spots'"),
    (_set(["prompts", "mold", 0, "severity"], "catastrophic"),
     "prompts.mold[0].severity: unknown severity 'catastrophic'"),
    (_set(["prompts", "healthy", 0, "severity"], "mild"), "prompts.healthy[0].severity: a healthy prompt"),
    (_set(["prompts", "healthy", 0, "healthy"], "yes please"), "prompts.healthy[0].healthy: expected true or false"),
    (_set(["prompts", "healthy", 0, "colour"], "red"), "prompts.healthy[0]: unknown key 'colour'"),
    (_set(["prompts", "mold", 0], "grey mold"), "prompts.mold[0]: expected a mapping"),
    (_set(["prompts", "mold"], []), "prompts.mold: expected a non-empty list"),
    (_set(["prompts"], ["grey mold"]), "prompts: expected a mapping of category"),
    (_set(["prompts", "healthy", 0, "healthy"], False), "no healthy prompts"),
    (_set(["prompts", "mold"], DELETE), "no defect prompts"),
    (_set(["template"], ""), "template: expected a non-empty string"),
    (_set(["template"], DELETE), "template: missing"),
    (_set(["template"], "a photo of a {domain}"), "template: 'a photo of a {domain}' has no {prompt}"),
    (_set(["template"], "a {colour} {domain} with {prompt}"), "template: 'a {colour} {domain} with {prompt}'"),
    (_set(["domain"], DELETE), "domain: missing"),
    (_set(["templte"], "x {prompt}"), "templte: unknown key"),
]


@pytest.mark.parametrize("edit,message", BAD, ids=[m.split(":")[0] + "|" + m.split(":")[-1][:25] for _, m in BAD])
def test_validation_errors_name_the_file_and_entry(tmp_path, edit, message):
    data = small_base()
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(KnowledgeError) as error:
        load_knowledge(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


@pytest.mark.parametrize("name,text,message", [
    ("kb.yaml", "domain: pear\nprompts: [unclosed\n", "line 3: invalid YAML"),
    ("kb.yaml", "domain: pear\ntemplate: x {prompt}\ndomain: apple\n", "line 3: invalid YAML: duplicate key 'domain'"),
    ("kb.yaml", "- just\n- a list\n", "expected a mapping with 'domain'"),
    ("kb.json", '{"domain": "pear",\n "prompts": }', "line 2: invalid JSON"),
    ("kb.json", '{"domain": "pear", "domain": "apple"}', "duplicate key 'domain'"),
])
def test_unparsable_files(tmp_path, name, text, message):
    path = write(tmp_path, text, name)
    with pytest.raises(KnowledgeError) as error:
        load_knowledge(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(KnowledgeError, match="cannot read"):
        load_knowledge(tmp_path / "absent.yaml")
    with pytest.raises(KnowledgeError, match="neither a built-in knowledge base"):
        load_knowledge("vegetables")
    with pytest.raises(KnowledgeError):
        KnowledgeBase.from_dict(None)


def test_kinds_are_optional_and_fill_in_their_noun_and_prompt(tmp_path):
    assert load_knowledge(write(tmp_path, small_base())).kinds == ()
    data = {**small_base(), "kinds": ["apple", {"id": "conference_pear", "noun": "conference pear"},
                                      {"id": "quince", "prompt": "a close-up photo of a quince"}]}
    kb = load_knowledge(write(tmp_path, data))
    assert [(k.id, k.noun, k.prompt) for k in kb.kinds] == [
        ("apple", "apple", "a photo of an apple"), ("conference_pear", "conference pear", "a photo of a conference pear"),
        ("quince", "quince", "a close-up photo of a quince")]
    assert kb.kind_sentences() == [k.prompt for k in kb.kinds] and kb.kind("quince").noun == "quince"
    with pytest.raises(KeyError, match="no kind 'plum'.*apple, conference_pear, quince"):
        kb.kind("plum")
    assert load_knowledge(write(tmp_path, kb.to_dict(), "again.yaml")) == kb
    assert kb.hash() != KnowledgeBase.from_dict(small_base()).hash()  # kinds change the labels
    fruit = load_knowledge()
    assert [k.id for k in fruit.kinds] == ["apple", "orange", "tomato", "pear", "banana", "lemon"]


def test_a_base_without_kinds_keeps_its_hash():
    """Datasets labeled before kinds existed stay compatible: no 'kinds' key, the same content hash."""
    kb = KnowledgeBase.from_dict(small_base())
    assert "kinds" not in kb.to_dict() and kb.hash() == "eeedd3afbef3fd0f"  # as before kinds existed


@pytest.mark.parametrize("kinds,message", [
    ([], "kinds: expected a non-empty list"),
    ("apple", "kinds: expected a non-empty list"),
    ([{"noun": "apple"}], "kinds[0]: missing 'id'"),
    (["apple", "apple"], "kinds[1]: duplicate id 'apple' (first at kinds[0])"),
    (["apple", {"id": "pome", "prompt": "a photo of an apple"}], "kinds[1]: duplicate prompt 'a photo of an apple'"),
    ([{"id": "apple", "colour": "red"}], "kinds[0]: unknown key 'colour'"),
    ([{"id": "red apple"}], "kinds[0].id: 'red apple': use only"),
    ([{"id": "apple", "noun": ""}], "kinds[0].noun: expected a non-empty string"),
    ([7], "kinds[0]: expected a mapping with 'id'"),
])
def test_bad_kinds_are_named_with_the_file(tmp_path, kinds, message):
    path = write(tmp_path, {**small_base(), "kinds": kinds})
    with pytest.raises(KnowledgeError) as error:
        load_knowledge(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_builtin_solar_cell_base_reads_as_a_solar_cell():
    from utils.summarizer import summarize

    kb = load_knowledge("solar_cell")
    assert kb.domain == "solar cell" and kb.healthy_word == "functional"
    assert {"crack", "dark_region", "finger_interruption", "material_defect"} <= set(kb.ids())
    assert summarize([("intact", 0.7), ("crack", 0.3)], kb) == ("A functional solar cell with even bright "
                                                                "luminescence and no defect.")
    assert summarize([("crack", 0.6), ("dark_region", 0.3), ("intact", 0.1)], kb) == (
        "A solar cell with a crack across the cell and a dark inactive region.")
    assert load_knowledge("fruit").healthy_word == "fresh" and "healthy_word" not in load_knowledge("fruit").to_dict()
    assert KnowledgeBase.from_dict(kb.to_dict()) == kb
