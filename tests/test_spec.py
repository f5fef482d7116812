"""ArchSpec: shorthands, exact JSON/YAML round-trips, and errors that name field, value and fix."""

import json

import pytest

from studio import ArchSpec, SpecError
from studio.spec import SpecLimits

BASE = {"vocab_size": 256, "d_model": 64, "n_layers": 8, "n_heads": 4}


def spec(**kw):
    return ArchSpec.from_dict({**BASE, **kw})


def test_pattern_shorthand_cycles_to_n_layers():
    s = spec(pattern="LLLS", pattern_map={"L": "lightning", "S": "softmax"})
    assert [l.mixer for l in s.layers] == ["lightning"] * 3 + ["softmax"] + ["lightning"] * 3 + ["softmax"]
    s = spec(n_layers=6, pattern="LS", pattern_map={"L": {"mixer": "sliding_window", "window": 16}, "S": "softmax"})
    assert [l.mixer for l in s.layers] == ["sliding_window", "softmax"] * 3
    assert s.layers[0].params == {"window": 16}


def test_ratio_shorthand():
    s = spec(ratio="7:1", pattern_map={"L": "lightning", "S": "softmax"})
    assert [l.mixer for l in s.layers] == ["lightning"] * 7 + ["softmax"]
    s = spec(n_layers=16, ratio="3:1", pattern_map={"L": "linear", "S": "softmax"})
    assert [l.mixer for l in s.layers].count("softmax") == 4


def test_defaults_are_resolved():
    s = spec(pattern="S", pattern_map={"S": "softmax"})
    assert s.d_head == 16 and s.n_kv_heads == 4


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_round_trip_is_exact(fmt, tmp_path):
    s = spec(n_kv_heads=2, mlp="gelu", norm="layernorm", tie_embeddings=False,
             pattern="LWNS", pattern_map={"L": {"mixer": "lightning", "decay": [0.9, 0.8, 0.7, 0.6]},
                                          "W": {"mixer": "sliding_window", "window": 32, "positional": "nope"},
                                          "N": {"mixer": "linear", "feature_map": "identity", "normalize": False},
                                          "S": "softmax"})
    text = s.to_json() if fmt == "json" else s.to_yaml()
    again = ArchSpec.from_json(text) if fmt == "json" else ArchSpec.from_yaml(text)
    assert again == s
    assert (again.to_json() if fmt == "json" else again.to_yaml()) == text
    path = tmp_path / f"spec.{fmt}"
    path.write_text(text)
    assert ArchSpec.load(path) == s
    assert (ArchSpec.from_json(str(path)) if fmt == "json" else ArchSpec.from_yaml(str(path))) == s


def _error(**kw) -> str:
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict({**BASE, **kw})
    return str(info.value)


def test_unknown_mixer_names_allowed_ones():
    msg = _error(pattern="X", pattern_map={"X": "softmx"})
    assert "layers[0," in msg and "'softmx'" in msg
    for name in ("softmax", "sliding_window", "linear", "lightning"):
        assert name in msg


def test_d_model_not_divisible():
    msg = _error(d_model=66, n_heads=4, pattern="S", pattern_map={"S": "softmax"})
    assert "d_model=66" in msg and "n_heads=4" in msg and "d_head" in msg


def test_kv_heads_must_divide_heads():
    msg = _error(n_kv_heads=3, pattern="S", pattern_map={"S": "softmax"})
    assert "n_kv_heads=3" in msg and "[1, 2, 4]" in msg


def test_window_must_be_positive():
    msg = _error(pattern="W", pattern_map={"W": {"mixer": "sliding_window", "window": 0}})
    assert "layers[0," in msg and "window=0" in msg and "greater than 0" in msg


def test_unknown_mixer_parameter():
    msg = _error(pattern="W", pattern_map={"W": {"mixer": "sliding_window", "windw": 8}})
    assert "'windw'" in msg and "allowed:" in msg and "window" in msg


def test_layer_count_mismatch():
    msg = _error(layers=[{"mixer": "softmax"}] * 3)
    assert "n_layers=8" in msg and "3 layers" in msg


def test_pattern_uses_undefined_key():
    msg = _error(pattern="LSX", pattern_map={"L": "lightning", "S": "softmax"})
    assert "pattern" in msg and "'X'" in msg


def test_bad_ratio():
    msg = _error(ratio="7-1", pattern_map={"L": "lightning", "S": "softmax"})
    assert "ratio" in msg and "'7-1'" in msg


def test_size_cap_is_configurable():
    big = {**BASE, "d_model": 4096, "n_heads": 32, "n_layers": 16, "pattern": "S", "pattern_map": {"S": "softmax"}}
    ArchSpec.from_dict(big)  # fine under the default cap
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(big, limits=SpecLimits(max_params=1e8))
    assert "over the size cap" in str(info.value) and "STUDIO_MAX_PARAMS" in str(info.value)


def test_lightning_decay_list_length_checked():
    msg = _error(pattern="L", pattern_map={"L": {"mixer": "lightning", "decay": [0.5, 0.5]}})
    assert "layers[0]" in msg and "n_heads=4" in msg


def test_wrong_types_and_unknown_fields():
    msg = _error(d_model="wide", pattern="S", pattern_map={"S": "softmax"})
    assert "d_model" in msg and "'wide'" in msg
    msg = _error(dmodel=64, pattern="S", pattern_map={"S": "softmax"})
    assert "dmodel" in msg and "unknown field" in msg


def test_unparseable_input():
    with pytest.raises(SpecError, match="not valid JSON"):
        ArchSpec.from_json('{"vocab_size": 2,')
    with pytest.raises(SpecError, match="no spec file"):
        ArchSpec.from_json("missing/spec.json")
    with pytest.raises(SpecError, match="mapping"):
        ArchSpec.from_yaml("- a list")


def test_json_text_is_plain_json():
    s = spec(ratio="1:1", pattern_map={"L": "linear", "S": "softmax"})
    data = json.loads(s.to_json())
    assert data["layers"][0] == {"mixer": "linear", "positional": "rope"}
    assert "pattern" not in data and "ratio" not in data
