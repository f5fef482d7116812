"""Our top-level package is called `kernels`, like the Hugging Face package that transformers probes
for. transformers must not take ours for theirs, and TransformerLens must import and run beside it."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import importlib.util, json
    spec = importlib.util.find_spec("kernels")
    from transformers.utils import import_utils
    available = import_utils.is_kernels_available()
    import transformers.integrations.hub_kernels  # guarded by the probe above
    import torch, transformer_lens
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    logits = llama(torch.tensor([[1, 2, 3]])).logits
    print(json.dumps({"origin": spec.origin, "available": available, "shape": list(logits.shape)}))
""")


def test_transformers_does_not_mistake_our_kernels_package():
    # A fresh interpreter outside the repo, so the installed project (not the test's cwd) is found,
    # and transformers' availability cache starts empty.
    out = subprocess.run([sys.executable, "-c", PROBE], cwd="/", capture_output=True, text=True, check=True)
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["origin"]).resolve() == REPO / "kernels" / "__init__.py", "this test must see our package"
    assert result["available"] is False, "transformers took our `kernels` for Hugging Face's"
    assert result["shape"] == [1, 3, 50]
