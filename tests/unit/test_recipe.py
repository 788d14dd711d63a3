"""Recipe validation: defaults, did-you-mean, lines, types, ranges, safe YAML, overrides."""

import pytest

from finetune.errors import RecipeError
from finetune.recipe import load_recipe, parse_duration

BASE = "name: demo\ndataset:\n  path: data.jsonl\n"


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path, text, overrides=None):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), overrides)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_defaults_fill_everything(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE))
    assert recipe.base_model == "bundled:smollm2-135m-instruct"
    assert recipe.lora.r == 16 and recipe.lora.alpha == 32 and recipe.lora.target_modules == "all-linear"
    assert recipe.quantization.bits == 4 and recipe.quantization.quant_type == "nf4"
    assert recipe.training.precision == "auto" and recipe.training.gradient_checkpointing == "auto"
    assert recipe.tracking.wandb == "offline"
    assert "learning_rate: auto" in recipe.to_yaml()


def test_unknown_key_suggests_the_closest_with_its_line(tmp_path):
    message = error_of(tmp_path, BASE + "lora:\n  rr: 8\n")
    assert "r.yaml: line 5" in message and "lora.rr" in message and "did you mean 'r'" in message


def test_unknown_top_level_key(tmp_path):
    message = error_of(tmp_path, BASE + "trainig:\n  epochs: 1\n")
    assert "did you mean 'training'" in message


def test_wrong_type_and_range(tmp_path):
    assert "training.batch_size" in error_of(tmp_path, BASE + "training:\n  batch_size: many\n")
    message = error_of(tmp_path, BASE + "training:\n  learning_rate: -1\n")
    assert "training.learning_rate" in message and "line 5" in message
    assert "quantization.bits" in error_of(tmp_path, BASE + "quantization: {bits: 3}\n")


def test_unparsable_yaml_names_the_line(tmp_path):
    message = error_of(tmp_path, "name: demo\ndataset: [unclosed\n")
    assert "invalid YAML" in message and "line" in message


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {marker}']",
                                 "!!python/object/apply:builtins.open ['{marker}', 'w']",
                                 "!!python/object/new:subprocess.Popen [['touch', '{marker}']]"])
def test_yaml_python_tags_are_never_constructed(tmp_path, tag):
    marker = tmp_path / "pwned"
    payload = tag.format(marker=marker)
    message = error_of(tmp_path, f"name: {payload}\n" + BASE[11:])
    assert "line 1" in message and ("not allowed" in message or "invalid YAML" in message), message
    assert not marker.exists(), "a YAML tag in the file ran code"
    # A --set value is YAML too: the tag stays a string the schema rejects.
    assert "training.seed" in error_of(tmp_path, BASE, [f"training.seed={payload}"])
    assert load_recipe(write(tmp_path, BASE), ["name=ok", f"dataset.path={payload}"]).dataset.path == payload
    assert not marker.exists(), "a YAML tag in an override ran code"


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "bad name"])
def test_run_name_must_not_be_a_path(tmp_path, name):
    assert "name" in error_of(tmp_path, BASE.replace("name: demo", f"name: '{name}'"))


def test_missing_required_and_empty(tmp_path):
    assert "dataset: required" in error_of(tmp_path, "name: demo\n")
    assert "empty" in error_of(tmp_path, "")


def test_overrides_and_durations(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), ["training.max_steps=20", "training.max_time=1h30m",
                                                 "quantization.bits=null"])
    assert recipe.training.max_steps == 20 and recipe.training.max_time == 5400
    assert recipe.quantization.bits is None
    assert "training.max_stepz" in error_of(tmp_path, BASE, ["training.max_stepz=3"])
    assert parse_duration("7h") == 25200 and parse_duration("90m") == 5400 and parse_duration(45) == 45
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_tracking_none_and_bad_marker(tmp_path):
    assert load_recipe(write(tmp_path, BASE + "tracking: none\n")).tracking.wandb == "disabled"
    assert "style.markers" in error_of(tmp_path, BASE + "style: {markers: ['(unclosed']}\n")


def test_trust_remote_code_is_off_by_default(tmp_path):
    assert load_recipe(write(tmp_path, BASE)).trust_remote_code is False
