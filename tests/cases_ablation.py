"""Mixer cases of the design-principle ablations (Deconstructing Attention, arXiv 2510.11602; Reducing the
Transformer to a Minimum, arXiv 2410.13732), merged into tests/mixer_cases.py: the six ablation mixers
and softmax's collapsed / symmetric q-k and collapsed v-o forms."""

CASES = {
    "mlp_mixing-default": ("mlp_mixing", {}, {}),
    "mlp_mixing-hidden8-gqa-gate-norm": ("mlp_mixing", {"hidden": 8, "output_gate": "sigmoid", "output_norm": True},
                                         dict(n_kv_heads=2)),
    "approx-default": ("approx", {}, {}),
    "approx-gqa-conv-nope": ("approx", {"short_conv": 3}, dict(n_kv_heads=2, positional="nope")),
    "non_approx-default": ("non_approx", {}, {}),
    "non_approx-mqa-halfrope-gate": ("non_approx", {"rope_fraction": 0.5, "output_gate": "swish"}, dict(n_kv_heads=1)),
    "rnd_emb_qk-default": ("rnd_emb_qk", {}, {}),
    "rnd_emb_qk-seed3-gqa-nope": ("rnd_emb_qk", {"seed": 3}, dict(n_kv_heads=2, positional="nope", layer_idx=2)),
    "fixed_seq_qk-default": ("fixed_seq_qk", {}, {}),
    "fixed_seq_qk-gqa-conv": ("fixed_seq_qk", {"short_conv": 2}, dict(n_kv_heads=2)),
    "static_emb_qk-default": ("static_emb_qk", {}, {}),
    "static_emb_qk-symmetric-nope": ("static_emb_qk", {"qk": "symmetric"}, dict(positional="nope")),
    "softmax-qk-collapsed": ("softmax", {"qk": "collapsed"}, {}),
    "softmax-qk-collapsed-gqa-halfrope-conv": ("softmax", {"qk": "collapsed", "rope_fraction": 0.5, "short_conv": 3},
                                               dict(n_kv_heads=2)),
    "softmax-qk-symmetric": ("softmax", {"qk": "symmetric"}, {}),
    "softmax-qk-symmetric-gqa-conv-gate": ("softmax", {"qk": "symmetric", "short_conv": 2, "output_gate": "sigmoid"},
                                           dict(n_kv_heads=2)),
    "softmax-vo-collapsed": ("softmax", {"vo": "collapsed"}, {}),
    "softmax-vo-collapsed-gqa-norm-gate": ("softmax", {"vo": "collapsed", "output_norm": True, "output_gate": "swish"},
                                           dict(n_kv_heads=2)),
    "softmax-qk-vo-collapsed-nope": ("softmax", {"qk": "collapsed", "vo": "collapsed"}, dict(positional="nope")),
}
