"""parsetune prep viggo-json: ViGGO MRs as JSON objects, with a JSON Schema learned from the train split."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import ASSETS, REPO, run_cli

BUNDLED = REPO / "prep" / "data" / "viggo"

GENRES = ["shooter, role-playing", "puzzle", "shooter", "shooter, puzzle"]  # 3 items, 4 lists: a list attribute
TOY_TRAIN = [
    (f"inform(name[Game {i}], release_year[{1990 + i}], rating[{'good' if i % 3 else 'excellent'}], genres[{GENRES[i % 4]}], "
     f"has_mac_release[{'yes' if i % 2 else 'no'}])", f"Game {i} from {1990 + i} is a {i % 4}-genre game.")
    for i in range(20)
] + [
    ("request_attribute(genres[])", "What kind of games do you like?"),
    ("confirm(name[Halo], rating[good], genres[shooter])", "You mean Halo, the good shooter?"),
]  # fmt: skip


def write_gem(path, rows, split="train"):
    path.write_text("".join(json.dumps({"gem_id": f"{split}-{i}", "meaning_representation": mr, "target": text}) + "\n" for i, (mr, text) in enumerate(rows)))
    return path


def prep_toy(tmp_path, validation_rows):
    train = write_gem(tmp_path / "train.jsonl", TOY_TRAIN)
    validation = write_gem(tmp_path / "validation.jsonl", validation_rows, "validation")
    out = tmp_path / "out"
    return run_cli("prep", "viggo-json", "--train", str(train), "--validation", str(validation), "--out", str(out)), out, validation


def test_toy_types_schema_and_targets(tmp_path):
    result, out, _ = prep_toy(tmp_path, [("inform(name[Braid], release_year[2008], genres[shooter, puzzle], has_mac_release[no])", "Braid is a 2008 puzzle shooter, not on Mac.")])
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == "schema.json" and "CC BY-SA 4.0" in manifest["license"]
    schema = json.loads((out / "schema.json").read_text())
    properties = schema["properties"]
    assert list(properties) == ["intent", "name", "release_year", "rating", "genres", "has_mac_release"]  # canonical order
    assert properties["intent"] == {"enum": ["inform", "confirm", "request_attribute"]}
    assert properties["name"] == {"type": "string"}  # copied from the sentence: free text
    assert properties["release_year"] == {"type": "integer"}
    assert properties["rating"] == {"enum": ["excellent", "good"]}  # closed
    assert properties["genres"] == {"type": ["array", "null"], "items": {"enum": ["shooter", "role-playing", "puzzle"]}, "minItems": 1, "maxItems": 2}
    assert properties["has_mac_release"] == {"type": "boolean"}
    assert schema["required"] == ["intent"] and schema["additionalProperties"] is False
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert train[0]["output"] == '{"intent":"inform","name":"Game 0","release_year":1990,"rating":"excellent","genres":["shooter","role-playing"],"has_mac_release":false}'
    assert train[20]["output"] == '{"intent":"request_attribute","genres":null}'
    assert train[0]["input"] == "Extract the information in the text as a JSON object.\n\nText: Game 0 from 1990 is a 0-genre game.\nJSON:\n"
    validation = json.loads((out / "validation.jsonl").read_text().splitlines()[0])
    assert json.loads(validation["output"]) == {"intent": "inform", "name": "Braid", "release_year": 2008, "genres": ["shooter", "puzzle"], "has_mac_release": False}


@pytest.mark.parametrize(
    "mr, expected",
    [
        ("inform(name[X], release_year[soon])", "release_year[soon] is not an integer"),
        ("inform(name[X], has_mac_release[maybe])", "has_mac_release[maybe] is not yes or no"),
        ("inform(name[X], genres[racing])", "target does not match the schema derived from the train split at genres/0"),
        ("inform(name[X], genres[shooter, puzzle, puzzle])", "at genres: ['shooter', 'puzzle', 'puzzle'] is too long"),
        ("inform(name[X], rating[poor])", "target does not match the schema derived from the train split at rating"),
        ("inform(name[X], platforms[PC])", "Additional properties are not allowed ('platforms' was unexpected)"),
    ],
)
def test_held_out_values_training_cannot_express_fail_with_file_and_line(tmp_path, mr, expected):
    result, out, validation = prep_toy(tmp_path, [("inform(name[Fez])", "Fez."), (mr, "Some sentence.")])
    assert result.returncode == 2
    assert f"{validation}:2: " in result.stderr and expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not out.exists()


def test_bundled_viggo_every_target_satisfies_the_derived_schema(tmp_path):
    out = tmp_path / "viggo-json"
    result = run_cli("prep", "viggo-json", "--out", str(out), "--instruction", "")
    assert result.returncode == 0, result.stderr
    assert f"schema: {out}/schema.json" in result.stdout
    schema = json.loads((out / "schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    source = {s: [json.loads(line) for line in (BUNDLED / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "validation")}
    for split, rows in source.items():
        records = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in records] == [row["gem_id"] for row in rows]
        for record in records:
            target = json.loads(record["output"])
            assert validator.is_valid(target), record
            assert list(target)[0] == "intent"
    properties = schema["properties"]
    assert properties["release_year"]["type"] == ["integer", "null"]  # empty in request_attribute rows
    assert properties["genres"]["type"] == ["array", "null"] and len(properties["genres"]["items"]["enum"]) == 25
    assert properties["platforms"]["maxItems"] == max(len(json.loads(r["output"]).get("platforms") or []) for r in records)
    assert properties["has_multiplayer"]["type"] == ["boolean", "null"]
    assert properties["rating"] == {"enum": ["average", "excellent", "good", "poor"]}
    assert properties["exp_release_date"] == {"type": "string"}  # "August 14, 2018": not an integer
    assert len(properties["intent"]["enum"]) == 9
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])["output"]
    assert first == (
        '{"intent":"inform","name":"Dirt: Showdown","release_year":2012,"esrb":"E 10+ (for Everyone 10 and Older)",'
        '"genres":["driving/racing","sport"],"platforms":["PlayStation","Xbox","PC"],"available_on_steam":false,'
        '"has_linux_release":false,"has_mac_release":false}'
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "viggo-json" and manifest["splits"]["validation"]["rows"] == 714
    assert "viggo_values" not in manifest  # the MR grammar's grounding is not for JSON


def test_a_schema_option_is_for_task_json_only(tmp_path):
    result = run_cli("prep", "viggo-json", "--out", str(tmp_path / "out"), "--train", str(ASSETS / "viggo_validation_50.jsonl"))
    assert result.returncode == 2 and "give both --train and --validation" in result.stderr


def test_prep_json_keeps_its_schema_beside_the_data_and_replaces_it(tmp_path):
    example = REPO / "prep" / "data" / "json_example"
    out = tmp_path / "events"
    args = ["prep", "json", "--train", str(example / "train.jsonl"), "--validation", str(example / "validation.jsonl"), "--out", str(out)]
    result = run_cli(*args, "--schema", str(example / "schema.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "schema.json").read_text()) == json.loads((example / "schema.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["schema"] == "schema.json"
    result = run_cli(*args)  # again without a schema: the set has none
    assert result.returncode == 0, result.stderr
    assert not (out / "schema.json").exists() and "schema" not in json.loads((out / "manifest.json").read_text())
