"""The Compose tab's gradio-free pieces: the per-layer table, the shorthand, the mixer help and the
architecture diagram."""

import json

import networkx as nx
import pandas as pd
import pytest

from studio import diagram
from studio.diagram import architecture_figure, architecture_graph, architecture_layout
from studio.layer_table import (LAYER_COLUMNS, apply_shorthand, mixer_parameter_help, rows_to_spec_data,
                                spec_to_rows, validate_rows)
from studio.mixers import REGISTRY
from studio.presets import PRESETS, preset
from studio.spec import ArchSpec, SpecError

BASE = {"name": "t", "vocab_size": 256, "d_model": 64, "n_heads": 4}
WITH_PARAMS = ArchSpec.from_dict({**BASE, "n_layers": 3, "layers": [
    {"mixer": "sliding_window", "window": 64, "positional": "nope"},
    {"mixer": "lightning", "decay": [0.9, 0.8, 0.7, 0.6], "block_size": 32},
    {"mixer": "softmax"},
]})


def _as_strings(rows):
    """What a Gradio Dataframe hands back: every cell a string."""
    return [[str(cell) for cell in row] for row in rows]


# ---- the layer table -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_rows_round_trip_presets(name):
    spec = preset(name)
    rows = spec_to_rows(spec)
    assert len(rows) == spec.n_layers and all(len(row) == len(LAYER_COLUMNS) for row in rows)
    # the base is the preset as written (shorthand keys included): they are replaced by the rows
    back = validate_rows({"name": name, "vocab_size": 256, **PRESETS[name]}, _as_strings(rows))
    assert back.to_dict() == spec.to_dict()


def test_rows_round_trip_with_params_and_dataframe():
    rows = spec_to_rows(WITH_PARAMS)
    assert rows[0] == [0, "sliding_window", "nope", '{"window": 64}'] and rows[2][3] == "{}"
    frame = pd.DataFrame(_as_strings(rows), columns=LAYER_COLUMNS)
    frame.loc[2, "params"] = ""  # a blank params cell is {}
    back = validate_rows(WITH_PARAMS.to_dict(), frame)
    assert back.layers == WITH_PARAMS.layers and back.to_dict() == WITH_PARAMS.to_dict()


def test_rows_to_spec_data_counts_rows_and_drops_shorthand():
    rows = [["0", "softmax", "rope", ""], ["", "lightning", "", "{block_size: 16}"], ["", "", "", ""]]
    data = rows_to_spec_data({**BASE, "n_layers": 8, "pattern": "S", "pattern_map": {"S": "softmax"}}, rows)
    assert data["n_layers"] == 2 and "pattern" not in data and "pattern_map" not in data
    assert data["layers"] == [{"mixer": "softmax", "positional": "rope"}, {"mixer": "lightning", "block_size": 16}]


def test_bad_params_cells_name_row_column_and_fix():
    rows = spec_to_rows(WITH_PARAMS)
    rows[1][3] = "window=64"
    rows[2][3] = "[64]"
    with pytest.raises(SpecError) as err:
        rows_to_spec_data(BASE, rows)
    fields = [field for field, _ in err.value.problems]
    assert fields == ["layers[1].params", "layers[2].params"]
    assert all("not a JSON object" in msg and '{"window": 64}' in msg for _, msg in err.value.problems)


def test_mixer_and_positional_keep_their_columns():
    with pytest.raises(SpecError) as err:
        rows_to_spec_data(BASE, [["0", "softmax", "rope", '{"mixer": "linear"}']])
    assert err.value.problems[0][0] == "layers[0].params" and "'mixer'" in err.value.problems[0][1]


def test_unknown_mixer_and_bad_parameter_get_the_specs_own_messages():
    rows = _as_strings(spec_to_rows(WITH_PARAMS))
    rows[1][1] = "mamba"
    with pytest.raises(SpecError) as err:
        validate_rows(BASE, rows)
    field, msg = err.value.problems[0]
    assert field == "layers[1]" and "unknown mixer 'mamba'" in msg and "registered mixers" in msg
    rows[1][1], rows[1][3] = "softmax", '{"window": 64}'
    with pytest.raises(SpecError, match="unknown parameter.*'window'.*'softmax'"):
        validate_rows(BASE, rows)


def test_apply_shorthand_expands_with_the_spec():
    spec = apply_shorthand({**BASE, "n_layers": 8, "layers": []}, ratio="3:1",
                           pattern_map='{"L": "lightning", "S": {"mixer": "sliding_window", "window": 8}}')
    assert [l.mixer for l in spec.layers] == (["lightning"] * 3 + ["sliding_window"]) * 2
    again = apply_shorthand({**BASE, "n_layers": 4, "pattern_map": {"L": "lightning", "S": "softmax"}}, pattern="LS")
    assert [row[1] for row in spec_to_rows(again)] == ["lightning", "softmax"] * 2
    with pytest.raises(SpecError, match="pattern_map"):
        apply_shorthand({**BASE, "n_layers": 4}, pattern="LS")


def test_mixer_parameter_help_lists_every_mixer():
    rows = mixer_parameter_help()
    assert sorted(row[0] for row in rows) == sorted(REGISTRY)
    by_name = {row[0]: row for row in rows}
    assert json.loads(by_name["sliding_window"][3])["window"] == 64
    assert by_name["lightning"][1] == "linear" and by_name["softmax"][1] == "softmax"
    for name, cls in REGISTRY.items():
        assert set(json.loads(by_name[name][3])) == set(cls.Params.model_fields)


# ---- the diagram ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [preset("smallthinker-nope-rope"), WITH_PARAMS])
def test_graph_is_the_residual_stream(spec):
    graph = architecture_graph(spec)
    assert graph.number_of_nodes() == spec.n_layers + 2
    assert nx.shortest_path(graph, "embed", "unembed") == ["embed", *range(spec.n_layers), "unembed"]
    parts = graph.nodes[0]["parts"]
    assert parts[0]["mixer"] == spec.layers[0].mixer and parts[0]["share"] == 1.0


def _family_traces(fig):
    return {t.name: t for t in fig.data if t.name not in ("residual stream", "embed / unembed")}


def test_figure_has_one_trace_per_family():
    spec = preset("minimax-7to1")
    fig = architecture_figure(spec)
    traces = _family_traces(fig)
    assert set(traces) == {"linear", "softmax"}
    assert len(traces["linear"].x) == 7 and len(traces["softmax"].x) == 1
    assert "L7 softmax" in traces["softmax"].text
    assert "positional rope" in traces["softmax"].hovertext[0]
    thinker = _family_traces(architecture_figure(preset("smallthinker-nope-rope")))
    assert set(thinker) == {"softmax"} and len(thinker["softmax"].x) == 8
    assert any('{"window": 64}' in h for h in thinker["softmax"].hovertext)
    assert any("positional nope" in h for h in thinker["softmax"].hovertext)


def test_many_layers_snake_into_columns():
    spec = ArchSpec.from_dict({**BASE, "n_layers": 64, "pattern": "LLLS",
                               "pattern_map": {"L": "lightning", "S": "softmax"}})
    pos = architecture_layout(architecture_graph(spec))
    assert len({x for x, _ in pos.values()}) == 3 and len({y for _, y in pos.values()}) <= diagram.MAX_ROWS
    traces = _family_traces(architecture_figure(spec))
    assert len(traces["linear"].x) == 48 and len(traces["softmax"].x) == 16


def test_intra_layer_mixture_is_drawn_as_parts(monkeypatch):
    one = diagram.layer_parts

    def split(layer):  # softmax layers split their heads half and half with lightning
        if layer.mixer != "softmax":
            return one(layer)
        other = one(type(layer)(mixer="lightning"))[0]
        return [{**one(layer)[0], "share": 0.5}, {**other, "share": 0.5}]

    monkeypatch.setattr(diagram, "layer_parts", split)
    spec = preset("small-hybrid")  # lightning, softmax
    graph = architecture_graph(spec)
    assert graph.number_of_nodes() == 4 and [p["mixer"] for p in graph.nodes[1]["parts"]] == ["softmax", "lightning"]
    fig = architecture_figure(spec)
    traces = _family_traces(fig)
    assert len(traces["softmax"].x) == 1 and len(traces["linear"].x) == 2
    assert len(fig.layout.shapes) == 1  # the box around the mixed layer


def test_a_layers_own_feed_forward_survives_the_table():
    data = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "mlp": "swiglu",
            "moe": {"n_experts": 4, "top_k": 2},
            "layers": [{"mixer": "softmax"}, {"mixer": "lightning", "mlp": "moe"}]}
    spec = ArchSpec.from_dict(data)
    rows = spec_to_rows(spec)
    assert json.loads(rows[1][3]) == {**spec.layers[1].params, "mlp": "moe"}
    again = ArchSpec.from_dict(rows_to_spec_data(data, [[str(c) for c in row] for row in rows]))
    assert again.to_dict() == spec.to_dict()
