"""The `studio` command: `studio mixers`, `studio summary SPEC`.

Bad input ends with a one-paragraph message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table


def _table(title: str, header: list[str], rows: list[list[str]], right_from: int = 2) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i >= right_from else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def mixers_rows() -> tuple[list[str], list[list[str]]]:
    from studio.mixers import REGISTRY

    state = {
        "kv_cache": "KV cache: 2 x kv_heads x d_head x T",
        "window": "KV window: 2 x kv_heads x d_head x min(T, w)",
        "matrix": "matrix: heads x d_head x d_head (constant)",
    }
    rows = [[name, cls.paper, cls.time_complexity, state[cls.state_kind]] for name, cls in sorted(REGISTRY.items())]
    return ["name", "paper", "time (sequence of T)", "inference state"], rows


def cmd_mixers(args) -> int:
    header, rows = mixers_rows()
    if args.json:
        print(json.dumps([dict(zip(header, r)) for r in rows], indent=2))
    else:
        Console(width=max(160, Console().width)).print(_table("Registered token mixers", header, rows, right_from=99))
    return 0


def cmd_summary(args) -> int:
    from studio.spec import ArchSpec
    from studio.summary import summarize, summary_rows

    spec = ArchSpec.load(args.spec)
    summary = summarize(spec, length=args.length, dtype_bytes=args.dtype_bytes)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    header, rows = summary_rows(summary)
    title = (f"{spec.name}: {spec.n_layers} layers, d_model {spec.d_model}, {spec.n_heads} heads "
             f"({spec.n_kv_heads} kv), state in {args.dtype_bytes}-byte numbers")
    Console(width=max(120, Console().width)).print(_table(title, header, rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Hybrid Attention Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mixers", help="list the registered token mixers")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_mixers)
    p = sub.add_parser("summary", help="parameters, FLOPs per token and decoding memory of a spec")
    p.add_argument("spec", help="a spec file (.json, .yaml or .yml)")
    p.add_argument("--length", type=int, default=4096, help="sequence length for FLOPs per token (default 4096)")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per stored number (default 2: bf16)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # SpecError is a ValueError
        print(f"studio {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
